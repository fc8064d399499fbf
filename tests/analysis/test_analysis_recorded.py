"""A real `make bench-quick` result (tests/analysis/fixtures/recorded_quick, see README there): the
format the harness actually writes, read end to end."""
from __future__ import annotations

import pytest

from analysis import write_report
from analysis.aggregate import summarize
from analysis.comparisons import compare
from analysis.summaries import WRK_KEYS
from analysis.format import num, render_compare
from analysis.load import load_results
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records

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
    """A schema 1 result still makes a whole report: goodput and cores used are derived from its
    keys, facets come from the registry (and the report says so)."""
    folder = results_copy("recorded_quick")
    md = write_report(folder).read_text()
    records = {r["server"]: r for r in read_records(folder)}
    headline = section(md, "## Headline")
    for server in ("py-torch", "py-onnx", "candle"):
        client = records[server]["client"]
        assert table_cell(headline, "all responses/s", server) == num(client["rps"])
        # no non-2xx: every response counts, over the load generator's own window
        assert table_cell(headline, "goodput (2xx/s)", server) == num(
            client["requests"] / client["duration_s"])
    assert table_cell(headline, "goodput (2xx/s)", "winner") == \
        "candle (single run: spread unknown)"
    # schema 1's db-ceiling was pgbench: a labelled reference, and no database ceiling
    assert "No database ceiling was recorded for this configuration." in headline
    assert (f"pgbench reference (text results): "
            f"{num(records['db-ceiling']['client']['rps'])} transactions/s (pgbench, "
            f"{records['db-ceiling']['client']['clients']} connections)") in headline
    latency = section(md, "## Latency percentiles")
    assert table_cell(latency, "candle", "from") == "merged histograms, 1 run"
    assert table_cell(latency, "candle", "99%") == num(
        records["candle"]["client"]["latency_us"]["p99"] / 1000)
    assert table_cell(latency, "candle", "66%") != "n/a"  # derived from the histogram
    cpu = section(md, "## CPU cost per request")
    onnx = records["py-onnx"]
    assert table_cell(cpu, "py-onnx", "server µs/req") == num(
        onnx["resources"]["server"]["cpu_us_per_req"])
    # cores used over the load window (client.duration_s 1.10 s), not the harness window (1.26 s)
    assert table_cell(cpu, "py-onnx", "server cores used") == num(
        onnx["resources"]["server"]["cpu_s"] / onnx["client"]["duration_s"])
    assert onnx["resources"]["harness"]["window_s"] > 1.1 * onnx["client"]["duration_s"]
    environment = section(md, "## Environment")
    assert ("Facets of candle, candle-no-model, py-none, py-onnx, py-torch are not (all) in "
            "env.json (results before schema 2): they are taken from `rankbench.servers.SERVERS` "
            "by name") in environment
    assert "No machine calibration was recorded" in environment
    findings = section(md, "## Findings")
    assert "[harness] candle (10 items/request, concurrency 32, repeat 0): other clients used " \
           "the database" in findings


def test_compare_two_results_gives_the_ratios_worked_out_by_hand(tmp_path):
    """B is A with py-onnx's load window 0.8 times as long for the same requests (goodput and
    responses/s x 1.25), half its server CPU per request, and without candle."""
    records = [r for r in read_records(RECORDED) if r["server"] != "candle"]
    for r in records:
        if r["server"] == "py-onnx":
            r["client"]["duration_s"] *= 0.8
            r["client"]["rps"] *= 1.25
            r["resources"]["server"]["cpu_us_per_req"] *= 0.5
    write_records(tmp_path / "b", records)
    a, b = summarize(load_results(RECORDED)), summarize(load_results(tmp_path / "b"))
    rows, only_a, only_b = compare(a, b)
    ratios = {(row.server, row.metric.name): row.ratio for row in rows}
    assert ratios[("py-onnx", "goodput (2xx/s)")] == pytest.approx(1.25)
    assert ratios[("py-onnx", "all responses/s")] == pytest.approx(1.25)
    assert ratios[("py-onnx", "server CPU µs/request")] == pytest.approx(0.5)
    assert ratios[("py-onnx", "server CPU (cores used)")] == pytest.approx(1.25)  # same CPU s
    assert ratios[("py-torch", "goodput (2xx/s)")] == pytest.approx(1.0)
    assert not any(server == "candle" for server, _ in ratios)
    assert only_a == ["candle (10 items/request, concurrency 32)"] and only_b == []
    text = render_compare(a, b, rows, only_a, only_b)
    line = next(line for line in text.splitlines() if "| py-onnx | goodput (2xx/s) |" in line)
    assert line.endswith("| 1.250 | 1.250–1.250 | unknown (1 run) |")
