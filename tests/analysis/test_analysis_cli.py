"""`python -m analysis report` and `python -m analysis compare` as a user runs them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from analysis.aggregate import summarize
from analysis.format import detail_configs, render_report
from analysis.load import load_results
from analysis_testlib import FIXTURES, ROOT, read_records, section, write_records


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_report_command_writes_into_the_results_folder(results_copy):
    folder = results_copy("hand")
    result = run_cli("report", str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"report: {folder / 'report.md'}\n"
    assert result.stderr == ""
    assert (folder / "report.md").read_text().startswith("# rankbench report: hand\n")


def test_report_all_tabulates_every_sweep_configuration():
    """`--all` (passed through to detail_configs) gives every configuration its tables; without
    it a 16-configuration sweep keeps the highest concurrency. Rendered in-process without
    figures: writing 32 bar charts would only make the test slow."""
    summary = summarize(load_results(FIXTURES / "sweep"))
    for all_configs, expected in ((True, 16), (False, 4)):
        report = render_report(summary, detail_configs(summary, all_configs), {})
        assert section(report, "## Headline").count("\n### ") == expected


def scaled_copy(tmp_path, factor: float, drop: str | None = None):
    records = [r for r in read_records(FIXTURES / "hand") if r["server"] != drop]
    for r in records:
        if r["server"] == "py-onnx":
            r["client"]["rps"] *= factor
            r["client"]["goodput_rps"] *= factor
    write_records(tmp_path / "b", records)
    return tmp_path / "b"


def test_compare_prints_ratios_with_spread_and_significance(tmp_path):
    b = scaled_copy(tmp_path, 1.10, drop="py-torch")
    result = run_cli("compare", str(FIXTURES / "hand"), str(b))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = [line for line in out.splitlines() if "| py-onnx | goodput (2xx/s) |" in line]
    assert len(rows) == 1
    # A 2,400-2,600, B 2,640-2,860: ratio 1.100, range 2640/2600 - 2860/2400, no overlap
    assert "| 2,500 ±4% | 2,750 ±4% | 1.100 | 1.015–1.192 | yes |" in rows[0]
    candle = [line for line in out.splitlines() if "| candle | goodput (2xx/s) |" in line][0]
    assert "| 1.000 |" in candle and candle.endswith("| no (ranges overlap) |")
    assert "Only in A: py-torch (10 items/request, concurrency 32)" in out
    # percentiles that are medians over runs are marked as such
    p99 = [line for line in out.splitlines() if "| py-onnx | p99 latency (ms) |" in line][0]
    assert "30.0 ±10%*" in p99


def test_compare_says_when_settings_differ(tmp_path):
    records = read_records(FIXTURES / "hand")
    for r in records:
        r["duration_s"] = 30.0
    write_records(tmp_path / "b", records)
    out = run_cli("compare", str(FIXTURES / "hand"), str(tmp_path / "b")).stdout
    assert ("**Settings differ**, so part of any difference comes from them: duration_s "
            "(A: 10; B: 30).") in out
    assert "A has 1 finding(s), B 2" in out  # the 503 note; B also lacks env.json


def test_compare_needs_two_folders():
    result = run_cli("compare", str(FIXTURES / "hand"))
    assert result.returncode == 2
    assert "the following arguments are required: B" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_refuses_unknown_schema_in_either_folder():
    result = run_cli("compare", str(FIXTURES / "hand"), str(FIXTURES / "bad_schema"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "schema 3 is not supported" in result.stderr



def test_compare_shows_each_days_calibration_and_their_ratio(tmp_path):
    """B's machine was slower that day: 30 vs 25 ns per Python loop iteration (B/A 1.200), 0.55 vs
    0.5 ns per native one (1.100). A schema 1 folder has no calibration: n/a, never 0."""
    b = tmp_path / "b"
    shutil.copytree(FIXTURES / "hand", b)
    env = json.loads((b / "env.json").read_text())
    env["calibration"].update(python_ns_per_iter=30.0, native_ns_per_iter=0.55)
    (b / "env.json").write_text(json.dumps(env))
    out = run_cli("compare", str(FIXTURES / "hand"), str(b)).stdout
    assert "| python loop (ns/iter) | 25.0 | 30.0 | 1.200 |" in out
    assert "| native loop (ns/iter) | 0.50 | 0.55 | 1.100 |" in out
    old = run_cli("compare", str(FIXTURES / "recorded_quick"), str(b)).stdout
    assert "| python loop (ns/iter) | n/a | 30.0 | n/a |" in old


def test_report_shows_the_calibration(results_copy):
    md = (results_copy("hand") / "report.md")
    run_cli("report", str(md.parent))
    assert ("Machine calibration, measured 2026-11-29T14:58:00Z: python loop (ns/iter) 25.0, native "
            "loop (ns/iter) 0.50") in md.read_text()
