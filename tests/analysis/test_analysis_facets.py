"""Servers are compared by their registry facets, never by their names: the pairs that isolate one
facet, and the two-step decomposition of a difference between languages. Expected values are worked
out by hand from the `hand` fixture (tests/analysis/fixtures/generate.py lists its figures)."""
from __future__ import annotations

import json
import shutil

import pytest

from analysis import write_report
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records


@pytest.fixture(scope="module")
def hand_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("r") / "hand"
    shutil.copytree(FIXTURES / "hand", folder)
    return write_report(folder).read_text()


def pairs(md: str) -> list[str]:
    return [line[2:] for line in section(md, "## What each pair of servers isolates").splitlines()
            if line.startswith("- ")]


def copy_with(tmp_path, records=None, env=None, verify=True):
    folder = tmp_path / "r"
    write_records(folder, records if records is not None else read_records(FIXTURES / "hand"))
    env = env if env is not None else json.loads((FIXTURES / "hand" / "env.json").read_text())
    (folder / "env.json").write_text(json.dumps(env))
    if verify:
        shutil.copy(FIXTURES / "hand" / "verify.json", folder / "verify.json")
    return folder


def test_every_pair_that_differs_in_one_facet_and_no_other(hand_report):
    found = pairs(hand_report)
    assert [line.split(":")[0] for line in found] == [
        "py-onnx vs py-torch", "py-onnx vs py-none", "py-torch vs py-none",
        "candle vs candle-no-model", "py-none vs candle-no-model"]
    # candle 150 us/request (27.15 s / 181,000), candle-no-model 100 (24 s / 240,000);
    # goodput 6000 / 8000
    assert ("candle vs candle-no-model: same stack, with and without a model (candle): the model's "
            "cost. Server CPU per request candle 150 ±0% µs vs candle-no-model 100 ±0% µs, "
            "Δ +50.0 µs (significant); goodput candle 6,000 ±3%/s vs candle-no-model 8,000 ±1%/s, "
            "0.75× (significant).") in found
    # py-none 230 us (27.6 s / 120,000) vs 100: the server layer, without any model
    assert any(line.startswith(
        "py-none vs candle-no-model: same runtime (none), other language (python, uvloop-httptools "
        "vs rust, actix): the server layer. Server CPU per request py-none 230 ±0% µs vs "
        "candle-no-model 100 ±0% µs, Δ +130 µs (significant); goodput py-none 4,000 ±2%/s vs "
        "candle-no-model 8,000 ±1%/s, 0.50× (significant).") for line in found)
    # py-onnx vs candle differ in language and runtime: never presented as isolating one
    assert not any("vs candle:" in line for line in found)


def test_a_pair_that_differs_in_two_facets_isolates_nothing(tmp_path):
    env = json.loads((FIXTURES / "hand" / "env.json").read_text())
    env["servers"]["py-onnx"]["http"] = "aiohttp"  # now other runtime AND other HTTP stack
    md = write_report(copy_with(tmp_path, env=env)).read_text()
    heads = [line.split(":")[0] for line in pairs(md)]
    assert not any("py-onnx" in head for head in heads)
    assert "py-torch vs py-none" in heads


def test_pairs_and_decompositions_come_from_facets_not_names(tmp_path):
    """The Rust servers renamed to names that say nothing: the same pairs and decompositions."""
    names = {"candle": "alpha", "candle-no-model": "beta"}
    records = read_records(FIXTURES / "hand")
    for r in records:
        r["server"] = names.get(r["server"], r["server"])
    env = json.loads((FIXTURES / "hand" / "env.json").read_text())
    env["servers"] = {names.get(k, k): {**v, "name": names.get(k, k),
                                        "floor": names.get(v["floor"], v["floor"])}
                      for k, v in env["servers"].items()}
    md = write_report(copy_with(tmp_path, records, env, verify=False)).read_text()
    heads = [line.split(":")[0] for line in pairs(md)]
    assert "alpha vs beta" in heads and "py-none vs beta" in heads
    assert "beta (floor)" in section(md, "## Headline")
    decomposition = section(md, "## Language overhead")
    assert "**py-onnx − alpha** = +226 µs" in decomposition
    assert "Step 1, floors py-none − beta: +130 µs" in decomposition


def test_a_server_with_unknown_facets_takes_part_in_no_pair(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "py-torch":
            r["server"] = "py-experimental"   # neither in env.json nor registered
    md = write_report(copy_with(tmp_path, records, verify=False)).read_text()
    assert "py-experimental (facets unknown)" in section(md, "## Headline")
    assert not any("py-experimental" in line for line in pairs(md))
    assert "py-experimental" not in section(md, "## Language overhead")
    assert ("Facets unknown (neither in env.json nor registered): py-experimental; they take part "
            "in no pair and no decomposition.") in section(md, "## Environment")


def test_two_step_decomposition_of_a_difference_between_languages(hand_report):
    md = section(hand_report, "## Language overhead: a two-step decomposition")
    # py-onnx 376, candle 150, py-none 230, candle-no-model 100 us/request:
    # 226 = (230 - 100) + ((376 - 230) - (150 - 100)) = 130 + 96; per repeat, py-onnx 368/400/
    # 361.54 against 150, 230 and 100 in every repeat: model paths 88, 120, 81.54
    assert ("- **py-onnx − candle** = +226 µs server CPU per request (2.5×). Step 1, floors "
            "py-none − candle-no-model: +130 µs (repeats +130 to +130); step 2, model paths "
            "(py-onnx − py-none) − (candle − candle-no-model): +96.0 µs (repeats +81.5 to "
            "+120).") in md
    # py-torch 640 us over its two valid repeats: 490 = 130 + 360
    assert "**py-torch − candle** = +490 µs" in md and ": +360 µs (repeats +360 to +360)" in md
    total, floors, paths = ("py-onnx − candle / py-onnx − candle",
                            "py-onnx − candle / 1. floors py-none − candle-no-model",
                            "py-onnx − candle / 2. model paths")
    # stages: infer 54.95 - 20 = 34.95; elsewhere 226 - (11 + 27 + 34.95 + 22) = 131.05
    assert [table_cell(md, total, c) for c in ("Δ parse", "Δ pre", "Δ infer", "Δ post",
                                               "Δ elsewhere")] == \
        ["+11.0", "+27.0", "+34.9", "+22.0", "+131"]
    # floors: parse 14 - 4, pre 10 - 1, infer 1 - 0.5, post 12 - 2; elsewhere 130 - 29.5 = 100.5
    assert [table_cell(md, floors, c) for c in ("Δ parse", "Δ pre", "Δ infer", "Δ post")] == \
        ["+10.0", "+9.00", "+0.50", "+10.0"]
    # model paths: infer (54.95 - 1) - (20 - 0.5) = 34.45; elsewhere 96 - 65.45 = 30.55
    assert table_cell(md, paths, "Δ infer") == "+34.4"
    assert table_cell(md, paths, "Δ elsewhere") == "+30.6"
    assert table_cell(md, paths, "range over repeats") == "+81.5 to +120"


def test_no_decomposition_without_both_floors(tmp_path):
    records = [r for r in read_records(FIXTURES / "hand") if r["server"] != "py-none"]
    md = write_report(copy_with(tmp_path, records)).read_text()
    decomposition = section(md, "## Language overhead")
    assert ("- **py-onnx − candle**: no decomposition: py-onnx's floor py-none has no valid run "
            "here.") in decomposition
    assert "Step 1, floors" not in decomposition and "| 2. model paths |" not in decomposition


def test_a_stage_not_recorded_is_na_in_the_split_never_zero(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] == "candle-no-model":
            del r["stages"]["pre"]
    md = write_report(copy_with(tmp_path, records)).read_text()
    decomposition = section(md, "## Language overhead")
    floors = "py-onnx − candle / 1. floors py-none − candle-no-model"
    assert table_cell(decomposition, floors, "Δ pre") == "n/a¹"
    assert table_cell(decomposition, floors, "Δ parse") == "+10.0"
    assert table_cell(decomposition, floors, "Δ elsewhere") == "n/a²"
    # the total does not involve the floors: its split stands
    assert table_cell(decomposition, "py-onnx − candle / py-onnx − candle", "Δ pre") == "+27.0"
    assert "n/a¹: candle-no-model recorded no `pre` stage." in decomposition
    stages = section(md, "## Where the time goes")
    assert table_cell(stages, "candle-no-model (floor)", "pre") == "n/a¹"
    assert "n/a¹: the server recorded no `pre` stage." in stages
