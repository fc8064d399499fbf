"""A real `make bench-quick` result (tests/analysis/fixtures/recorded_quick, see README there): the
format the harness actually writes, read end to end."""
from __future__ import annotations

import pytest

from analysis import write_report
from analysis.aggregate import WRK_KEYS, compare, summarize
from analysis.format import num, render_compare
from analysis.load import load_results
from analysis_testlib import FIXTURES, read_records, section, table_cell

RECORDED = FIXTURES / "recorded_quick"


@pytest.mark.parametrize("record", read_records(RECORDED), ids=lambda r: r["server"])
def test_histogram_percentiles_reproduce_the_harness_figures(record):
    """Same rank convention as wrk and the harness: from each run's own histogram the analysis
    finds exactly the latency_us figures the harness recorded (pgbench's included)."""
    (run,) = [r for r in load_results(RECORDED).runs if r.server == record["server"]]
    histogram = run.histograms["client"]
    assert histogram.count == record["client"]["histogram_count"]
    found = histogram.percentiles(WRK_KEYS)
    for p, key in WRK_KEYS.items():
        assert found[p] == record["client"]["latency_us"][key], (record["server"], key)


def test_recorded_quick_report(results_copy):
    folder = results_copy("recorded_quick")
    md = write_report(folder).read_text()
    records = {r["server"]: r for r in read_records(folder)}
    headline = section(md, "## Headline")
    for server in ("py-torch", "py-onnx", "candle"):
        assert table_cell(headline, "requests/s", server) == num(records[server]["client"]["rps"])
    assert table_cell(headline, "requests/s", "winner") == "candle (single run: spread unknown)"
    latency = section(md, "## Latency percentiles")
    assert table_cell(latency, "candle", "from") == "merged histograms, 1 run"
    assert table_cell(latency, "candle", "99%") == num(
        records["candle"]["client"]["latency_us"]["p99"] / 1000)
    assert table_cell(latency, "candle", "66%") != "n/a"  # derived from the histogram
    cpu = section(md, "## CPU cost per request")
    assert table_cell(cpu, "py-onnx", "server µs/req") == num(
        records["py-onnx"]["resources"]["server"]["cpu_us_per_req"])
    # the ceiling ran with min(concurrency, pool) pgbench clients, and the line says so
    assert f"{records['db-ceiling']['client']['clients']} clients" in headline
    warnings = section(md, "## Warnings")
    assert "[harness] candle (10 items/request, concurrency 32, repeat 0): other clients used " \
           "the database" in warnings


def test_a_result_compared_with_itself_is_unchanged():
    summary = summarize(load_results(RECORDED))
    rows, only_a, only_b = compare(summary, summary)
    assert rows and not only_a and not only_b
    assert all(row.ratio == pytest.approx(1.0) for row in rows)
    assert "| 1.000 | 1.000–1.000 | unknown (1 run) |" in render_compare(summary, summary, rows,
                                                                         only_a, only_b)
