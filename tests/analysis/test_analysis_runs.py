"""What a run counts for: goodput and validity, cores used over the load window, its position in the
run order, equal work on the wire, the database ceiling, and figures that were not measured.
Expected values are worked out by hand from the `hand` fixture (see fixtures/generate.py)."""
from __future__ import annotations

import copy
import json
import shutil

import pytest

from analysis import figures, write_report
from analysis.aggregate import summarize
from analysis.load import Config, load_results
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records

CONFIG = Config("rank", 10, 32)


def folder_with(tmp_path, records, *, verify: dict | None | bool = True):
    folder = tmp_path / "r"
    write_records(folder, records)
    shutil.copy(FIXTURES / "hand" / "env.json", folder / "env.json")
    if verify is True:
        shutil.copy(FIXTURES / "hand" / "verify.json", folder / "verify.json")
    elif verify:
        (folder / "verify.json").write_text(json.dumps(verify))
    return folder


def findings(folder) -> list[str]:
    return [f"{f.where}: {f.text}" for f in summarize(load_results(folder)).findings]


# -- goodput and validity ------------------------------------------------------------------------


def test_invalid_runs_are_listed_apart_with_their_reasons(tmp_path):
    md = write_report(folder_with(tmp_path, read_records(FIXTURES / "hand"))).read_text()
    invalid = section(md, "## Invalid runs")
    assert invalid.count("\n- ") == 1
    assert "- py-torch (10 items/request, concurrency 32, repeat 1): 3 non-2xx response(s)" in invalid
    runs = section(md, "## Runs")
    # repeat 1 runs the order rotated by one: py-torch comes last, at position 6
    row = next(line for line in runs.splitlines() if line.startswith("| py-torch | 1 |"))
    assert row.split(" | ")[2] == "6"
    assert row.endswith("| no: 3 non-2xx response(s) |")
    # goodput counts 2xx only: (14,500 - 3) / 10 s
    assert row.split(" | ")[3] == "1,450"


def test_a_cell_whose_runs_are_all_invalid_is_struck_and_contests_nothing(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "py-onnx":
            r["valid"], r["invalid_reasons"] = False, ["socket errors {'read': 5}"]
    md = write_report(folder_with(tmp_path, records)).read_text()
    headline = section(md, "## Headline")
    assert table_cell(headline, "goodput (2xx/s)", "py-onnx") == "~~2,500 ±4%~~"
    # without py-onnx (0.92-0.96), candle's 0.885-0.93 cores no longer overlap anyone's
    assert table_cell(headline, "server CPU (cores used)", "winner") == "candle"
    latency = section(md, "## Latency percentiles")
    assert table_cell(latency, "py-onnx", "50%") == "~~12.0*~~"
    assert section(md, "## Invalid runs").count("\n- py-onnx") == 3
    pairs = section(md, "## What each pair of servers isolates")
    assert "py-onnx" not in pairs


def test_schema_1_errors_make_a_run_invalid_and_goodput_counts_2xx(tmp_path):
    record = read_records(FIXTURES / "recorded_quick")[0]
    assert record["schema"] == 1 and "ok" not in record["client"]
    record["client"].update(requests=1217, non2xx=17, duration_s=2.0)
    record["client"]["errors"].update(status=17, read=1)
    write_records(tmp_path / "r", [record])
    (run,) = load_results(tmp_path / "r").runs
    assert run.ok == 1200 and run.goodput_rps == 600.0   # (1217 - 17) / 2 s
    assert not run.valid
    assert run.invalid_reasons == ("17 non-2xx response(s)", "socket errors read 1")


def test_a_record_marked_valid_despite_errors_is_invalid(tmp_path):
    record = read_records(FIXTURES / "hand")[1]
    assert record["valid"] is True
    record["client"]["errors"]["timeout"] = 2
    write_records(tmp_path / "r", [record])
    (run,) = load_results(tmp_path / "r").runs
    assert not run.valid and run.invalid_reasons == ("socket errors timeout 2",)


def test_valid_must_be_a_boolean(tmp_path):
    from analysis.load import ResultsError
    record = read_records(FIXTURES / "hand")[1]
    record["valid"] = "yes"
    write_records(tmp_path / "r", [record])
    with pytest.raises(ResultsError, match=r":1: 'valid' must be true or false"):
        load_results(tmp_path / "r")


# -- cores used ----------------------------------------------------------------------------------


def test_cores_used_are_over_the_load_window_not_the_harness_window(tmp_path):
    """Schema 1 records: no cores_used; the harness sampled for 30 s around a 10 s load window
    (start-up and the histogram dump). py-onnx used 9.2/9.6/9.4 CPU s: 0.94 cores, not 0.31."""
    records = read_records(FIXTURES / "hand")
    for r in records:
        r["schema"] = 1
        for group in r["resources"].values():
            if group:
                group.pop("cores_used", None)
        r["resources"]["harness"] = {"cpu_s": 0.05, "window_s": 30.0}
    md = write_report(folder_with(tmp_path, records)).read_text()
    assert table_cell(section(md, "## Headline"), "server CPU (cores used)", "py-onnx") == \
        "0.94 ±2%"


def test_recorded_cores_used_are_taken_as_written(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "py-onnx":
            r["resources"]["server"]["cores_used"] = 0.5
    md = write_report(folder_with(tmp_path, records)).read_text()
    assert table_cell(section(md, "## Headline"), "server CPU (cores used)", "py-onnx") == \
        "0.50 ±0%"


# -- position in the run order -------------------------------------------------------------------


def set_goodput(record: dict, value: float) -> None:
    record["client"]["rps"] = record["client"]["goodput_rps"] = value


def test_a_position_effect_beyond_the_spread_is_a_finding(tmp_path):
    """Two configurations, so each position holds two runs of a server. candle's goodput is
    6000/6200/5400 at positions 3/2/1 (concurrency 32) and 6000/6180/5440 (concurrency 64):
    medians 6000, ratios at position 2 1.0333 and 1.03, at position 1 0.9 and 0.9067: medians
    1.0317 and 0.9033, 12.8 points apart and no overlap. py-onnx at concurrency 64 runs
    2500/2600/2400 where concurrency 32 ran 2500/2400/2600: its positions 0 and 6 overlap."""
    hand = [r for r in read_records(FIXTURES / "hand") if r["server"] in ("candle", "py-onnx")]
    wide = copy.deepcopy(hand)
    for r in wide:
        r["concurrency"] = 64
    for records, candle, onnx in ((hand, (6000, 6200, 5400), (2500, 2400, 2600)),
                                  (wide, (6000, 6180, 5440), (2500, 2600, 2400))):
        for r in records:
            set_goodput(r, {"candle": candle, "py-onnx": onnx}[r["server"]][r["repeat"]])
    found = findings(folder_with(tmp_path, hand + wide))
    position = [f for f in found if "position effect" in f]
    assert position == [
        "candle: position effect in the run order: runs at position 2 reach 103% of their "
        "cell's median goodput, runs at position 1 90% (a 13% gap, above 5%, and no run at "
        "position 1 reaches one at position 2): the order the servers ran in moved its figures"]
    md = write_report(tmp_path / "r").read_text()
    # positions 0 to 6 (the two references were left out): candle never ran first or last
    assert "| candle | — | 90.3% (2) | 103.2% (2) | 100.0% (2) | — |" in \
        section(md, "## Variation and run order")


def test_one_run_per_position_shows_no_position_effect(tmp_path):
    """The hand fixture's one configuration: py-onnx's positions differ by 8 points (0.96 vs
    1.04), but with one run per position there is no spread to tell an effect from noise."""
    assert not [f for f in findings(folder_with(tmp_path, read_records(FIXTURES / "hand")))
                if "position effect" in f]


# -- equal work on the wire ----------------------------------------------------------------------


def test_response_sizes_are_tabulated_and_unequal_bodies_are_a_finding(tmp_path):
    verify = json.loads((FIXTURES / "hand" / "verify.json").read_text())
    folder = folder_with(tmp_path, read_records(FIXTURES / "hand"), verify=verify)
    md = write_report(folder).read_text()
    wire = section(md, "## Equal work on the wire")
    assert table_cell(wire, "candle", "verify: mean body (bytes)") == "612"
    assert table_cell(wire, "py-none", "bytes/response, 10 items/request, concurrency 32") == \
        "518 ±0%"
    # 612 / 612 / 612.5 (0.08% apart) and 402 / 402: equal work
    assert not [f for f in findings(folder) if "equal work" in f]
    for entry in verify["servers"]:
        if entry["server"] == "candle":
            entry["mean_body_bytes"] = 640.0   # 28 / 612 = 4.6% more than the Python servers
    folder = folder_with(tmp_path, read_records(FIXTURES / "hand"), verify=verify)
    assert [f for f in findings(folder) if "equal work" in f] == [
        "verify: servers with real scores answer the same fixed requests with mean bodies of "
        "candle 640.0, py-onnx 612.0, py-torch 612.0 bytes (4.6% apart, above 1%): they do not "
        "send equal work on the wire"]


def test_without_verify_json_body_sizes_are_na(tmp_path):
    folder = folder_with(tmp_path, read_records(FIXTURES / "hand"), verify=None)
    wire = section(write_report(folder).read_text(), "## Equal work on the wire")
    assert "verify.json is not in the results folder" in wire
    assert table_cell(wire, "candle", "verify: mean body (bytes)") == "n/a¹"
    assert "n/a¹: no verify.json." in wire


# -- the database ceiling ------------------------------------------------------------------------


def test_a_server_above_the_database_ceiling_is_a_finding(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "db-ceiling":
            set_goodput(r, 7500.0)
    found = [f for f in findings(folder_with(tmp_path, records)) if "ceiling is not" in f]
    # candle-no-model's median 8000 > 7500; pgbench (7000) is a reference, not a bound
    assert found == ["candle-no-model (10 items/request, concurrency 32): goodput 8,000/s is above "
                     "the database ceiling's 7,500/s (107%): the ceiling is not a ceiling here; "
                     "its client does more (or other) work than the servers' database work"]


# -- what was not measured -----------------------------------------------------------------------


def test_a_group_not_measured_is_left_out_of_the_bars_and_the_sum(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "py-onnx":
            del r["resources"]["load"]
    folder = folder_with(tmp_path, records)
    summary = summarize(load_results(folder))
    cells = summary.servers_in(CONFIG)
    fig = figures.cpu_figure(CONFIG, cells + summary.references_for(CONFIG))
    ax = fig.axes[0]
    load_bars = next(c for c in ax.containers if c.get_label() == "load generator")
    assert len(load_bars) == len(cells) + 2 - 1  # every row but py-onnx's: no bar of width 0
    texts = {t.get_position()[1]: t.get_text() for t in ax.texts}
    row = [t.get_text() for t in ax.get_yticklabels()].index("py-onnx")
    assert texts[row] == " n/a: load generator not recorded"
    # a reference has no server: nothing drawn and nothing missing, its total stands
    ceiling = [t.get_text() for t in ax.get_yticklabels()].index("db-ceiling (rankbench-ceiling)")
    assert texts[ceiling] == " 190"
    cpu = section(write_report(folder).read_text(), "## CPU cost per request")
    assert table_cell(cpu, "py-onnx", "load generator µs/req") == "n/a¹"
    assert table_cell(cpu, "py-onnx", "total µs/req") == "n/a²"
    assert table_cell(cpu, "py-onnx", "server µs/req") == "376 ±6%"
