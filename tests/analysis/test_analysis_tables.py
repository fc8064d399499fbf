"""The numbers in the report's tables, checked against values worked out by hand from the
`hand` fixture (tests/analysis/fixtures/generate.py lists its figures)."""
from __future__ import annotations

import pytest

from analysis import write_report
from analysis.aggregate import Stat, choose_winner, summarize
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
    order = ["## Headline", "## Latency percentiles", "## Where the time goes",
             "## CPU cost per request", "## Python overhead", "## Environment", "## Warnings"]
    positions = [hand_report.index(h) for h in order]
    assert positions == sorted(positions)
    assert "## Sweep" not in hand_report  # one configuration: nothing to sweep


def test_headline_medians_spread_and_ceiling_share(hand_report):
    md = headline(hand_report)
    # py-onnx rps 2500/2400/2600: median 2500, largest deviation 100/2500 = 4%
    assert table_cell(md, "requests/s", "py-onnx") == "2,500 ±4%"
    assert table_cell(md, "requests/s", "py-none (floor)") == "4,000 ±2%"
    # cores = server cpu_s / 10 s: 0.92/0.96/0.94 -> 0.94 ±2%
    assert table_cell(md, "server CPU (cores used)", "py-onnx") == "0.94 ±2%"
    assert table_cell(md, "server peak RSS (MB)", "candle") == "38.2 ±1%"  # 38.0/38.5/38.25
    # no histograms: p99 = median of 30000/33000/29000 us = 30.0 ms, ±10%
    assert table_cell(md, "p99 latency (ms)", "py-onnx") == "30.0 ±10%"
    # 2500 / 12000 (ceiling median) = 20.8%; repeats paired by round: 2400/12500 = 19.2%,
    # 2600/11800 = 22.0%: ±8%
    assert table_cell(md, "share of db-ceiling", "py-onnx") == "21% ±8%"
    assert table_cell(md, "share of db-ceiling", "candle-no-model (floor)") == "67% ±3%"
    assert "db-ceiling: 12,000 ±4% transactions/s (pgbench" in md


def test_headline_winner_only_outside_the_spread(hand_report):
    md = headline(hand_report)
    assert table_cell(md, "requests/s", "winner") == "candle"
    # candle 0.885-0.93 cores overlaps py-onnx 0.92-0.96 and py-torch 0.928-0.992
    assert table_cell(md, "server CPU (cores used)", "winner") == \
        "not significant (candle ≈ py-onnx ≈ py-torch)"
    # floors are not contestants even when they are faster
    assert table_cell(md, "p99 latency (ms)", "winner") == "candle"


def test_latency_table_marks_medians_and_never_interpolates(hand_report):
    md = section(hand_report, "## Latency percentiles (ms, as seen by the load generator)")
    assert table_cell(md, "py-onnx", "50%") == "12.0*"
    assert table_cell(md, "py-onnx", "99.9%") == "45.0*"
    for missing in ("66%", "80%", "98%"):
        assert table_cell(md, "py-onnx", missing) == "n/a"
    assert table_cell(md, "py-onnx", "100%") == "70.0"  # max of 60/70/65 ms, exact, unmarked
    assert table_cell(md, "py-onnx", "from") == "median of 3 runs*"
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
    # db 12000/12400/11700 over 15000/14500/15500 requests = 541,150,000 / 45,000 = 12025.6
    assert table_cell(md, "py-torch", "db") == "12,026"
    # the floors have no model stages
    assert table_cell(md, "py-none (floor)", "infer") == "—"
    assert table_cell(md, "py-none (floor)", "pre") == "—"
    assert "![stage breakdown, 10 items/request, concurrency 32](stages_rank_n10_c32.png)" in md


def test_cpu_per_request_table(hand_report):
    md = section(hand_report, "## CPU cost per request (µs of CPU per request)")
    # (9.2 + 9.6 + 9.4) s / 75,000 requests = 376 us; repeats 368/400/361.5: ±6%
    assert table_cell(md, "py-onnx", "server µs/req") == "376 ±6%"
    assert table_cell(md, "py-onnx", "database µs/req") == "180 ±0%"
    assert table_cell(md, "py-onnx", "total µs/req") == "616"
    assert table_cell(md, "py-none (floor)", "server µs/req") == "230 ±0%"  # 27.6 s / 120,000
    assert table_cell(md, "db-ceiling (pgbench)", "server µs/req") == "—"
    assert table_cell(md, "db-ceiling (pgbench)", "total µs/req") == "190"


def test_python_overhead_sentences_and_table(hand_report):
    md = section(hand_report, "## Python overhead")
    # 376 - 150 = 226 us; infer 54.95 - 20 = 34.9; elsewhere 226 - (11 + 27 + 34.95 + 22) = 131
    # (the rest of the handler is not counted as CPU: in asyncio it includes event-loop waits)
    assert ("**py-onnx** uses 376 µs of server CPU per request, 226 µs more than candle (2.5×): "
            "infer +34.9, pre +27.0, post +22.0, parse +11.0, +131 µs outside those stages.") in md
    assert "**py-onnx** against its own floor py-none: the model path costs 146 µs more" in md
    assert ("**py-none**, Python's DB+HTTP floor, uses 130 µs more server CPU per request than "
            "candle-no-model, Rust's (2.3×): parse +10.0, post +10.0, +110 µs outside those "
            "stages.") in md
    vs_candle, vs_floor = "py-torch / candle (Rust reference)", "py-torch / py-none (own floor)"
    assert table_cell(md, vs_candle, "Δ µs/req") == "+490"
    assert table_cell(md, vs_candle, "Δ infer") == "+240"
    assert table_cell(md, vs_candle, "ratio") == "4.27×"
    assert table_cell(md, vs_floor, "Δ µs/req") == "+410"
    assert table_cell(md, vs_floor, "Δ infer") == "+260"  # py-none has no infer stage
    assert table_cell(md, vs_floor, "Δ elsewhere") == "+101"  # 410 - (1 + 35 + 260 + 13)
    assert table_cell(md, "py-onnx / candle (Rust reference)", "significant") == "yes"


def test_harness_warnings_are_listed_as_written(hand_report):
    md = section(hand_report, "## Warnings")
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
    md = section(write_report(tmp_path / "r").read_text(), "## Warnings")
    where = "py-torch (10 items/request, concurrency 32, repeat 1)"
    assert f"- [analysis] {where}: 3 client errors (status 3)" in md
    assert f"- [analysis] {where}: 3 responses were not 2xx" in md


def test_spread_above_ten_percent_and_saturated_wrk_are_warned(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "candle" and r["repeat"] == 2:
            r["client"]["rps"] = 4800.0  # median 6000: -20%
        if r["server"] == "py-onnx" and r["repeat"] == 0:
            r["resources"]["load"]["cpu_s"] = 9.5  # 0.95 cores over 10 s
    write_records(tmp_path / "r", records)
    md = write_report(tmp_path / "r").read_text()
    assert ("candle (10 items/request, concurrency 32): requests/s varies by ±20% over 3 "
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
    texts = [w.text for w in summary.warnings]
    assert any(t.startswith("servers ran with different workers (workers=1: ") and
               "workers=2: candle" in t for t in texts), texts


def test_single_runs_never_declare_significance():
    summary = summarize(load_results(FIXTURES / "sweep"))
    md = render_report(summary, detail_configs(summary, all_configs=False), {})
    assert table_cell(headline(md), "requests/s", "winner") == "candle (single run: spread unknown)"
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


def test_load_from_outside_the_benchmark_is_one_warning(tmp_path):
    """Records with the machine's busy CPU time: what no benchmark process accounts for is load
    from elsewhere, summarised in one line (runs affected, median and worst)."""
    records = read_records(FIXTURES / "hand")
    for r in records:
        ours = sum(side["cpu_s"] for side in r["resources"].values() if side)
        extra = 6.0 if (r["server"], r["repeat"]) == ("candle", 2) else 0.5
        r["resources"]["machine"] = {"busy_cpu_s": ours + 0.4 + extra, "cores": 2}
        r["resources"]["db_foreign"] = {"cpu_s": 0.4}  # someone else's queries: foreign too
    write_records(tmp_path / "r", records)
    summary = summarize(load_results(tmp_path / "r"))
    texts = [w.text for w in summary.warnings if w.where == "machine"]
    # 0.5 + 0.4 CPU s over 10 s = 0.09 cores: below 0.10 except the disturbed run (0.64 cores)
    assert texts == ["processes outside the benchmark used more than 0.10 cores during 1 of 18 "
                     "runs (median 0.64 cores, up to 0.64 (32% of the machine) in candle (10 "
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
    assert table_cell(section(md, "## Latency percentiles"), "candle", "99%") == "n/a"
    assert table_cell(section(md, "## Where the time goes"), "candle", "parse") == \
        "no stage figures recorded"
    assert table_cell(section(md, "## CPU cost per request"), "candle", "server µs/req") == "—"
    assert "env.json was not recorded" in md
    assert not list((tmp_path / "r").glob("*.png"))


def test_zero_throughput_declares_no_winner():
    zero = Stat(0.0, (0.0,), "median")
    assert choose_winner([("a", zero), ("b", zero)], higher_is_better=True).text == "tie (a = b)"
