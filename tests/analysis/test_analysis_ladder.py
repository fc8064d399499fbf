"""The report's ladder (issue 13) and batching (issue 15) sections, on the `hand` fixture's runs put
under other servers' names and facets. Expected values are worked out by hand from the fixture's
figures (tests/analysis/fixtures/generate.py): server CPU per request py-torch 640 µs (its valid
repeats 0 and 2), py-onnx 376, py-none 230, candle 150; goodput medians py-torch 1525 (1500, 1550),
py-onnx 2500, py-none 4000, candle 6000."""
from __future__ import annotations

import json
import shutil

from analysis import write_report
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records


def renamed_report(tmp_path, names: dict[str, str], facets: dict[str, dict],
                   batching: dict[str, dict] | None = None) -> str:
    records = read_records(FIXTURES / "hand")
    for r in records:
        if r["server"] in names:
            r["server"] = names[r["server"]]
            if batching and r["server"] in batching:
                r.setdefault("server_info", {})["batching"] = batching[r["server"]]
    env = json.loads((FIXTURES / "hand" / "env.json").read_text())
    servers = {}
    for old, spec in env["servers"].items():
        new = names.get(old, old)
        servers[new] = {**spec, "name": new, **facets.get(new, {})}
    env["servers"] = servers
    folder = tmp_path / "r"
    write_records(folder, records)
    (folder / "env.json").write_text(json.dumps(env))
    return write_report(folder).read_text()


PUBLISHED = {"http": "fastapi-uvicorn", "variant": "published-stack", "floor": None}


def ladder_report(tmp_path) -> str:
    return renamed_report(
        tmp_path, {"py-torch": "seed-onnx", "py-none": "seed-torch"},
        {"seed-onnx": {**PUBLISHED, "runtime": "onnxruntime", "role": "model"},
         "seed-torch": {**PUBLISHED, "runtime": "torch", "role": "model"},
         "py-onnx": {"notes": "no framework at all"}})


def test_the_ladder_steps_in_registry_order_with_their_shares(tmp_path):
    md = section(ladder_report(tmp_path), "## From the published stack to Candle")
    # seed-onnx 640 -> py-onnx 376 -> candle 150 µs: steps -264 and -226 of -490 (54%, 46%)
    assert table_cell(md, "py-onnx", "step Δ CPU") == "-264 (repeats -278 to -272)"
    assert table_cell(md, "py-onnx", "share of Δ") == "54%"
    assert table_cell(md, "candle", "step Δ CPU").startswith("-226")
    assert table_cell(md, "candle", "share of Δ") == "46%"
    # goodput 1525 -> 2500 -> 6000: factors 1.64 and 2.40, ln shares 0.494 / 1.370 and 0.875 / 1.370
    assert table_cell(md, "py-onnx", "step factor").startswith("1.64×")
    assert table_cell(md, "py-onnx", "share of factor") == "36%"
    assert table_cell(md, "candle", "step factor").startswith("2.40×")
    assert table_cell(md, "candle", "share of factor") == "64%"
    # the first rung has no step; the step to candle changes language and runtime together
    assert table_cell(md, "seed-onnx", "step Δ CPU") == "—"
    assert "changes several facets (language, http, runtime, interpreter)" in \
        table_cell(md, "candle", "what the step changes")
    # a step names what its server is, from the registry's notes that env.json recorded
    assert table_cell(md, "py-onnx", "what the step changes").endswith(
        "(py-onnx: no framework at all)")
    assert "End to end, seed-onnx → candle: server CPU -490 µs per request" in md
    assert "The step that moves goodput most: py-onnx → candle, 2.40×" in md


def test_the_published_ratios_beside_ours(tmp_path):
    md = section(ladder_report(tmp_path), "## From the published stack to Candle")
    # beside the ladder: seed-torch (the py-none runs) 230 µs, 410 below seed-onnx
    assert table_cell(md, "beside: seed-torch", "step Δ CPU").startswith("-410")
    assert table_cell(md, "beside: seed-torch", "share of Δ") == "—"
    # candle / seed-torch: 6000 / 4000 = 1.50 here, 994 / 222 = 4.48 published;
    # candle / seed-onnx: 6000 / 1525 = 3.93 here, 994 / 80 = 12.43 published
    assert "candle / seed-torch goodput: 1.50×" in md and "the published study: 4.48×" in md
    assert "candle / seed-onnx goodput: 3.93×" in md and "the published study: 12.43×" in md
    assert "the study's load shape is concurrency 10; this is 32" in md


def test_no_ladder_section_without_the_published_stack(tmp_path):
    # py-onnx and candle are rungs, but without the first one (the published stack) there is no
    # ladder to walk down
    md = write_report(shutil.copytree(FIXTURES / "hand", tmp_path / "h")).read_text()
    assert "## From the published stack to Candle" not in md


def test_no_ladder_section_with_the_published_stack_alone(tmp_path):
    md = renamed_report(tmp_path, {"py-torch": "seed-onnx"},
                        {"seed-onnx": {**PUBLISHED, "runtime": "onnxruntime", "role": "model"}})
    assert "## From the published stack to Candle" in md   # seed-onnx, py-onnx, candle
    records = [r for r in read_records(FIXTURES / "hand") if r["server"] == "py-torch"]
    for r in records:
        r["server"] = "seed-onnx"
    folder = tmp_path / "alone"
    write_records(folder, records)
    env = json.loads((FIXTURES / "hand" / "env.json").read_text())
    env["servers"] = {"seed-onnx": {**env["servers"]["py-torch"], "name": "seed-onnx", **PUBLISHED,
                                    "runtime": "onnxruntime"}}
    (folder / "env.json").write_text(json.dumps(env))
    assert "## From the published stack to Candle" not in write_report(folder).read_text()


def test_batching_beside_per_request_and_against_rust(tmp_path):
    md = renamed_report(
        tmp_path, {"py-none": "py-onnx-batch"},
        {"py-onnx-batch": {"runtime": "onnxruntime", "variant": "micro-batching", "role": "model"}},
        batching={"py-onnx-batch": {"batches": 1000, "requests": 4000}})
    md = section(md, "## Batching vs language")
    assert table_cell(md, "py-onnx-batch", "mean batch size") == "4.00"
    assert table_cell(md, "py-onnx", "mean batch size") == "—"
    assert table_cell(md, "py-onnx-batch", "variant") == "micro-batching"
    # goodput 4000 / 2500; p50 7600 / 12000 (medians of the runs' own p50s)
    assert "- py-onnx-batch / py-onnx: goodput 1.60×" in md
    assert "p50 0.63×" in md
    # Python with batching against Rust without: 4000 / 6000
    assert "- py-onnx-batch / candle (per-request): goodput 0.67×" in md


def test_no_batching_section_without_a_batching_server(tmp_path):
    md = write_report(shutil.copytree(FIXTURES / "hand", tmp_path / "h")).read_text()
    assert "## Batching vs language" not in md
