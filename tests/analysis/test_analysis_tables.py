"""The numbers in the report's tables, checked against values worked out by hand from the
`hand` fixture (tests/analysis/fixtures/generate.py lists its figures)."""
from __future__ import annotations

import pytest

from analysis import write_report
from analysis.aggregate import summarize
from analysis.stats import Stat, choose_winner
from analysis.format import detail_configs, render_report
from analysis.load import load_results
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records


@pytest.fixture(scope="module")
def hand_report(tmp_path_factory):
    import shutil
    folder = tmp_path_factory.mktemp("r") / "hand"
    shutil.copytree(FIXTURES / "hand", folder)
    return write_report(folder).read_text()


def headline(md: str) -> str:
    return section(md, "## Headline")


def test_sections_come_in_the_issue_order(hand_report):
    order = ["## Headline", "## Invalid runs", "## What each pair of servers isolates",
             "## Latency percentiles", "## Where the time goes", "## CPU cost per request",
             "## Language overhead: a two-step decomposition", "## Equal work on the wire",
             "## Environment", "## Variation and run order", "## Runs", "## Findings"]
    positions = [hand_report.index("\n" + h) for h in order]
    assert positions == sorted(positions)
    assert "## Sweep" not in hand_report  # one configuration: nothing to sweep


def test_headline_is_goodput_with_medians_spread_and_reference_shares(hand_report):
    md = headline(hand_report)
    rows = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ")]
    assert rows[2:4] == ["goodput (2xx/s)", "all responses/s"]  # after the header and rule
    # py-onnx goodput 2500/2400/2600: median 2500, largest deviation 100/2500 = 4%
    assert table_cell(md, "goodput (2xx/s)", "py-onnx") == "2,500 ±4%"
    assert table_cell(md, "all responses/s", "py-onnx") == "2,500 ±4%"
    assert table_cell(md, "goodput (2xx/s)", "py-none (floor)") == "4,000 ±2%"
    # py-torch's repeat 1 is invalid: 1500 and 1550 remain, median 1525, 25/1525 = 1.6%
    assert table_cell(md, "goodput (2xx/s)", "py-torch") == "1,525 ±2%"
    # cores used = server cpu_s / 10 s load window: 0.92/0.96/0.94 -> 0.94 ±2%
    assert table_cell(md, "server CPU (cores used)", "py-onnx") == "0.94 ±2%"
    assert table_cell(md, "server peak RSS (MB)", "candle") == "38.2 ±1%"  # 38.0/38.5/38.25
    # no histograms: p99 = median of 30000/33000/29000 us = 30.0 ms, ±10%
    assert table_cell(md, "p99 latency (ms)", "py-onnx") == "30.0 ±10%"
    # 2500 / 12000 (ceiling median) = 20.8%; repeats paired by round: 2400/12500 = 19.2%,
    # 2600/11800 = 22.0%: ±8%
    assert table_cell(md, "share of database ceiling", "py-onnx") == "21% ±8%"
    # py-torch over its valid repeats: 1525/12000 = 12.7%; 1500/12000, 1550/11800: ±3%
    assert table_cell(md, "share of database ceiling", "py-torch") == "13% ±3%"
    # pgbench's text results make it a lower reference: candle-no-model at 8000/7000 = 114%
    assert table_cell(md, "share of pgbench reference", "candle-no-model (floor)") == "114% ±2%"
    assert ("database ceiling (the servers' own database work, no HTTP, no model): 12,000 ±4% "
            "transactions/s (rankbench-ceiling, 8 connections).") in md
    assert "pgbench reference (text results): 7,000 ±3% transactions/s (pgbench" in md


def test_headline_winner_only_outside_the_spread(hand_report):
    md = headline(hand_report)
    assert table_cell(md, "goodput (2xx/s)", "winner") == "candle"
    assert table_cell(md, "all responses/s", "winner") == "—"  # goodput is what wins
    # candle 0.885-0.93 cores overlaps py-onnx 0.92-0.96; py-torch 0.96-0.992 does not
    assert table_cell(md, "server CPU (cores used)", "winner") == \
        "not significant (candle ≈ py-onnx)"
    # floors are not contestants even when they are faster
    assert table_cell(md, "p99 latency (ms)", "winner") == "candle"


def test_latency_table_marks_medians_and_never_interpolates(hand_report):
    md = section(hand_report, "## Latency percentiles (ms, as seen by the load generator)")
    assert table_cell(md, "py-onnx", "50%") == "12.0*"
    assert table_cell(md, "py-onnx", "99.9%") == "45.0*"
    for missing in ("66%", "80%", "98%"):
        assert table_cell(md, "py-onnx", missing) == "n/a¹"
    assert ("n/a¹: wrk reports 50/75/90/95/99/99.9/99.99% and the maximum; this percentile needs "
            "a latency histogram and is not interpolated.") in md
    assert table_cell(md, "py-onnx", "100%") == "70.0"  # max of 60/70/65 ms, exact, unmarked
    assert table_cell(md, "py-onnx", "from") == "median of 3 runs*"
    # the invalid repeat is left out: p99 median of 36.0 and 35.0 ms
    assert table_cell(md, "py-torch", "99%") == "35.5*"
    assert table_cell(md, "py-torch", "from") == "median of 2 runs*"
    assert "* Median over repeats of each run's own percentile" in md


def test_stage_breakdown_is_pooled_and_adds_up(hand_report):
    md = section(hand_report, "## Where the time goes: stage breakdown (mean µs per request)")
    # infer 55/57/53 us over 25000/24000/26000 requests: 4,121,000 / 75,000 = 54.95
    assert table_cell(md, "py-onnx", "infer") == "54.9"
    # total 686,246,000 / 75,000 = 9149.95; stages 15+9000+30+54.95+25 -> rest 25.0
    assert table_cell(md, "py-onnx", "handler total") == "9,150"
    assert table_cell(md, "py-onnx", "rest of handler") == "25.0"
    # client mean 12800 - 9149.95 = 3650
    assert table_cell(md, "py-onnx", "outside handler") == "3,650"
    # db of the valid repeats, 12000 and 11700 us over 15000 and 15500 requests:
    # 361,350,000 / 30,500 = 11847.5
    assert table_cell(md, "py-torch", "db") == "11,848"
    assert table_cell(md, "py-none (floor)", "infer") == "1.00"
    assert "![stage breakdown, 10 items/request, concurrency 32](stages_rank_n10_c32.png)" in md


def test_cpu_per_request_table(hand_report):
    md = section(hand_report, "## CPU cost per request (µs of CPU per request)")
    # (9.2 + 9.6 + 9.4) s / 75,000 requests = 376 us; repeats 368/400/361.5: ±6%
    assert table_cell(md, "py-onnx", "server µs/req") == "376 ±6%"
    assert table_cell(md, "py-onnx", "database µs/req") == "180 ±0%"
    assert table_cell(md, "py-onnx", "total µs/req") == "616"
    assert table_cell(md, "py-none (floor)", "server µs/req") == "230 ±0%"  # 27.6 s / 120,000
    # a reference has no HTTP server: not applicable, not "not measured", and not in the sum
    ceiling = "db-ceiling (rankbench-ceiling)"
    assert table_cell(md, ceiling, "server µs/req") == "—"
    assert table_cell(md, ceiling, "total µs/req") == "190"
    assert table_cell(md, "db-ceiling-pgbench (pgbench)", "total µs/req") == "255"
    assert "machine-independent" not in hand_report
    assert "comparable only as ratios between servers of one results folder" in md


def test_harness_warnings_are_listed_as_written(hand_report):
    md = section(hand_report, "## Findings")
    where = "py-torch (10 items/request, concurrency 32, repeat 1)"
    assert f"- [harness] {where}: 3 responses with status 503 (database unavailable)" in md
    # the harness looked at this run: its wording stands, nothing is said twice
    assert f"- [analysis] {where}" not in md


def test_runs_without_harness_warnings_are_checked_here(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "py-torch" and r["repeat"] == 1:
            r["warnings"] = []  # e.g. written by a harness that does not check
    write_records(tmp_path / "r", records)
    md = section(write_report(tmp_path / "r").read_text(), "## Findings")
    where = "py-torch (10 items/request, concurrency 32, repeat 1)"
    assert f"- [analysis] {where}: 3 client errors (status 3)" in md
    assert f"- [analysis] {where}: 3 responses were not 2xx" in md


def test_spread_above_ten_percent_and_saturated_wrk_are_warned(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "candle" and r["repeat"] == 2:
            r["client"]["goodput_rps"] = 4800.0  # median 6000: -20%
        if r["server"] == "py-onnx" and r["repeat"] == 0:
            r["resources"]["load"]["cores_used"] = 0.95
    write_records(tmp_path / "r", records)
    md = write_report(tmp_path / "r").read_text()
    assert ("candle (10 items/request, concurrency 32): goodput varies by ±20% over 3 "
            "repeats") in md
    assert ("py-onnx (10 items/request, concurrency 32, repeat 0): the load generator (wrk) used "
            "95% of a core per thread") in md


def test_unequal_settings_are_flagged(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "candle":
            r["workers"] = 2
    write_records(tmp_path / "r", records)
    summary = summarize(load_results(tmp_path / "r"))
    texts = [w.text for w in summary.findings]
    assert any(t.startswith("servers ran with different workers (workers=1: ") and
               "workers=2: candle" in t for t in texts), texts


def test_single_runs_never_declare_significance():
    summary = summarize(load_results(FIXTURES / "sweep"))
    md = render_report(summary, detail_configs(summary, all_configs=False), {})
    assert table_cell(headline(md), "goodput (2xx/s)", "winner") == \
        "candle (single run: spread unknown)"
    assert "Single runs only: run-to-run spread is unknown" in md
    # a sweep keeps tables to the highest concurrency and says so
    assert "Tables show 4 of the 16 configurations" in md
    assert "### 10 items/request, concurrency 64" in md
    assert "### 10 items/request, concurrency 16" not in md


def test_stat_spread_measures():
    stat = Stat(2500.0, (2500.0, 2400.0, 2600.0), "median")
    assert stat.deviation == pytest.approx(0.04)
    assert stat.cv == pytest.approx(100 / 2500)  # sample stdev 100, mean 2500
    assert (stat.lo, stat.hi, stat.n) == (2400.0, 2600.0, 3)
    assert Stat(5.0, (5.0,), "median").cv is None


def test_choose_winner_ties_and_direction():
    a = Stat(10.0, (9.0, 10.0, 11.0), "median")
    b = Stat(12.0, (10.5, 12.0, 12.5), "median")
    c = Stat(20.0, (19.0, 20.0, 21.0), "median")
    assert choose_winner([("a", a), ("c", c)], higher_is_better=True).text == "c"
    assert choose_winner([("a", a), ("c", c)], higher_is_better=False).text == "a"
    verdict = choose_winner([("a", a), ("b", b), ("c", c)], higher_is_better=False)
    assert verdict.text == "not significant (a ≈ b)" and verdict.winner is None
    assert choose_winner([("a", None)], higher_is_better=True).text == "n/a"


def test_load_from_outside_the_benchmark_is_one_finding(tmp_path):
    """Records with the machine's busy CPU time: what no benchmark process accounts for is load
    from elsewhere, summarised in one line (runs affected, median and worst)."""
    records = read_records(FIXTURES / "hand")
    for r in records:
        ours = sum(side["cpu_s"] for side in r["resources"].values() if side)
        extra = 6.0 if (r["server"], r["repeat"]) == ("candle", 2) else 0.5
        r["resources"]["machine"] = {"busy_cpu_s": ours + 0.4 + extra, "cores": 2}
        r["resources"]["db_foreign"] = {"cpu_s": 0.4}  # someone else's queries: foreign too
        r["resources"]["harness"] = {"cpu_s": 0.0, "window_s": 10.0}
    write_records(tmp_path / "r", records)
    summary = summarize(load_results(tmp_path / "r"))
    texts = [w.text for w in summary.findings if w.where == "machine"]
    # (0.5 + 0.4) CPU s over the 10 s window = 0.09 cores, below 10% of 2 cores, except the
    # disturbed run: 6.4 CPU s = 0.64 cores
    assert texts == ["processes outside the benchmark used more than 10% of the machine during 1 "
                     "of 21 runs (median 0.64 cores, up to 0.64 (32% of the machine) in candle (10 "
                     "items/request, concurrency 32, repeat 2)): those figures are disturbed by an "
                     "unknown amount; rerun on a quiet machine before trusting them"]


def test_minimal_records_still_make_a_report(tmp_path):
    """Only the keys the contract requires: no stages, resources, latency or histograms. Every
    figure that needs them says so instead of failing, and no empty figure is drawn."""
    records = read_records(FIXTURES / "recorded_quick")
    for r in records:
        for key in ("stages", "resources", "workers", "pool_size", "top_k", "warmup_s",
                    "started_at", "warnings"):
            r.pop(key, None)
        r["client"] = {k: r["client"][k] for k in ("tool", "requests", "rps")}
    write_records(tmp_path / "r", records)
    md = write_report(tmp_path / "r").read_text()
    latency = section(md, "## Latency percentiles")
    assert table_cell(latency, "candle", "99%") == "n/a¹"
    assert "n/a¹: the run records hold no latency figures." in latency
    assert table_cell(section(md, "## Where the time goes"), "candle", "parse") == \
        "no stage figures recorded"
    cpu = section(md, "## CPU cost per request")
    assert table_cell(cpu, "candle", "server µs/req") == "n/a¹"
    assert table_cell(cpu, "candle", "total µs/req") == "n/a⁴"  # never a sum of what is left
    assert "n/a¹: the run records hold no server CPU time." in cpu
    assert "n/a⁴: a part of the sum is n/a, so the sum is unknown." in cpu
    assert "env.json was not recorded" in md
    assert not list((tmp_path / "r").glob("*.png"))


def test_zero_throughput_declares_no_winner():
    zero = Stat(0.0, (0.0,), "median")
    assert choose_winner([("a", zero), ("b", zero)], higher_is_better=True).text == "tie (a = b)"
