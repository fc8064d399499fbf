"""The language x runtime matrix (issue 17): servers placed by their registry facets, and the
language cost once per runtime held constant. Expected values are worked out by hand from the `hand`
fixture's figures (tests/analysis/fixtures/generate.py)."""
from __future__ import annotations

import json
import shutil

from analysis import write_report
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records

PY = "python (uvloop-httptools, cpython-3.11)"
RUST = "rust (actix)"


def report_with(tmp_path, extra_rust_onnx: bool) -> str:
    """The hand fixture, optionally with a Rust server on ONNX Runtime whose runs are candle's."""
    folder = tmp_path / "r"
    records = read_records(FIXTURES / "hand")
    env = json.loads((FIXTURES / "hand" / "env.json").read_text())
    if extra_rust_onnx:
        records += [{**r, "server": "rust-onnx", "backend": "onnx"} for r in records
                    if r["server"] == "candle"]
        env["servers"]["rust-onnx"] = {**env["servers"]["candle"], "name": "rust-onnx",
                                       "runtime": "onnxruntime", "backend": "onnx"}
    write_records(folder, records)
    (folder / "env.json").write_text(json.dumps(env))
    shutil.copy(FIXTURES / "hand" / "verify.json", folder / "verify.json")
    return write_report(folder).read_text()


def test_each_server_sits_in_its_stack_row_and_runtime_column(tmp_path):
    md = section(report_with(tmp_path, extra_rust_onnx=False), "## Language x runtime")
    # goodput medians: py-torch 1500 (its valid repeats), py-onnx 2500, py-none 4000, candle 6000,
    # candle-no-model 8000
    assert table_cell(md, PY, "PyTorch").endswith("(py-torch)")
    assert table_cell(md, PY, "ONNX Runtime").startswith("2,500") \
        and table_cell(md, PY, "ONNX Runtime").endswith("(py-onnx)")
    assert table_cell(md, PY, "no model").startswith("4,000")
    assert table_cell(md, RUST, "Candle").startswith("6,000") \
        and table_cell(md, RUST, "Candle").endswith("(candle)")
    assert table_cell(md, RUST, "ONNX Runtime") == ""   # not measured: an empty cell, not a 0
    assert table_cell(md, PY, "Candle") == ""
    # server CPU per request: py-onnx 28.2 s / 75,000 = 376 µs; candle 150 µs
    assert table_cell(md, PY, "ONNX Runtime", index=1).startswith("376")
    assert table_cell(md, RUST, "Candle", index=1).startswith("150")
    # infer stage: py-onnx (55 + 57 + 53) weighted by requests: (55·25000 + 57·24000 + 53·26000)
    # / 75000 = 54.95 (printed 54.9: 54.949999... in binary); candle 20
    assert table_cell(md, PY, "ONNX Runtime", index=2).startswith("54.9")
    assert table_cell(md, RUST, "Candle", index=2).startswith("20.0")


def test_one_runtime_in_common_gives_one_estimate(tmp_path):
    md = section(report_with(tmp_path, extra_rust_onnx=False), "## Language x runtime")
    # py-none 230 µs vs candle-no-model 100 µs in every repeat; goodput 8000 / 4000
    assert table_cell(md, "no model", "Δ CPU µs/req") == "+130"
    assert table_cell(md, "no model", "pair") == "py-none − candle-no-model"
    assert table_cell(md, "no model", "CPU ratio") == "2.30× ±0%"
    assert table_cell(md, "no model", "goodput ratio").startswith("2.00×")
    assert "Estimates:" not in md   # nothing to agree with


def test_two_runtimes_in_common_and_whether_they_agree(tmp_path):
    md = section(report_with(tmp_path, extra_rust_onnx=True), "## Language x runtime")
    assert table_cell(md, RUST, "ONNX Runtime").endswith("(rust-onnx)")
    # py-onnx 368 / 400 / 361.54 µs per repeat against rust-onnx's 150: +226, +211.5 to +250
    assert table_cell(md, "ONNX Runtime", "Δ CPU µs/req") == "+226"
    assert table_cell(md, "ONNX Runtime", "range over repeats") == "+212 to +250"
    assert table_cell(md, "no model", "range over repeats") == "+130 to +130"
    assert ("Estimates: ONNX Runtime (+226 µs) and no model (+130 µs) disagree: their ranges do "
            "not overlap.") in md


def test_no_matrix_without_a_pair_across_languages(tmp_path):
    folder = tmp_path / "r"
    records = [r for r in read_records(FIXTURES / "hand") if r["server"] != "candle-no-model"]
    write_records(folder, records)
    shutil.copy(FIXTURES / "hand" / "env.json", folder / "env.json")
    md = write_report(folder).read_text()
    assert "## Language x runtime" not in md
