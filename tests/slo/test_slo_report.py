"""analysis/slo_report.py on a hand-made results folder: the capacity table, servers needed, the
pairs chosen by facets and their ratios, the sentence on why the ratios differ, the figure."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import slo_report
from rankbench.config import ROOT

FACETS = {
    "rs": {"language": "rust", "http": "actix", "runtime": "candle", "interpreter": None,
           "variant": "per-request", "role": "model", "floor": None, "real_scores": True},
    "pyc": {"language": "python", "http": "uvloop-httptools", "runtime": "candle",
            "interpreter": "cpython-3.11", "variant": "per-request", "role": "model", "floor": None,
            "real_scores": True},
    "pyo": {"language": "python", "http": "uvloop-httptools", "runtime": "onnxruntime",
            "interpreter": "cpython-3.11", "variant": "per-request", "role": "model",
            "floor": None, "real_scores": True},
}


def record(server: str, scenario: str, repeat: int, goodput: float, p50_ms: float, p99_ms: float,
           offered: float | None = None, timeout: int = 0) -> dict:
    duration = 10.0
    requests = int(goodput * duration)
    p50, p99 = int(p50_ms * 1000), int(p99_ms * 1000)
    hist = [[p50, requests - requests // 50], [p99, requests // 50]]
    client = {"tool": "oha" if scenario == "slo" else "wrk", "requests": requests,
              "rps": goodput, "non2xx": 0, "ok": requests, "goodput_rps": goodput,
              "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": timeout},
              "latency_us": {"p50": p50, "p90": p50, "p99": p99, "p99.9": p99, "max": p99,
                             "mean": p50, "stdev": 1.0},
              "histogram": hist, "duration_s": duration, "threads": 1, "not_completed": timeout}
    out = {"schema": 2, "server": server, "backend": "x", "scenario": scenario, "candidates": 10,
           "concurrency": 256 if scenario == "slo" else 32, "repeat": repeat,
           "duration_s": duration, "client": client, "valid": timeout == 0,
           "invalid_reasons": [] if timeout == 0 else [f"socket errors timeout {timeout}"],
           "warnings": [], "resources": {
               "server": {"cpu_s": 1.0, "cpu_us_per_req": 100.0, "cores_used": 0.1},
               "db": {"cpu_s": 0.5, "cores_used": 0.05},
               "load": {"cpu_s": 0.2, "cpu_us_per_req": 20.0, "cores_used": 0.02}}}
    if scenario == "slo":
        out.update(offered_rps=offered, achieved_rps=goodput, rate_step="ladder",
                   offered_share=None, objectives={})
    else:
        out["slo_role"] = "closed-loop maximum"
    return out


def write_folder(path: Path, runs: dict[str, tuple[float, list[tuple[float, float, float]]]]):
    """runs: server -> (closed-loop goodput, [(offered, p50 ms, p99 ms), ...])."""
    path.mkdir()
    lines = []
    for server, (closed, ladder) in runs.items():
        lines.append(record(server, "rank", 0, closed, 2.0, 20.0))
        for i, (offered, p50, p99) in enumerate(ladder):
            lines.append(record(server, "slo", i, offered, p50, p99, offered))
    (path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    env = {"schema": 2, "servers": {n: dict(FACETS[n], name=n) for n in runs},
           "slo": {"objective_ms": 25.0, "generator": {"tool": "oha", "version": "oha 1.16.0",
                                                       "connections": 256, "threads": 1,
                                                       "limit": {"max_rps": 20000}}}}
    (path / "env.json").write_text(json.dumps(env))
    return path


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "study", {
        # rs: closed loop 10,000, p99 under 25 ms up to 9,000 (90%).
        "rs": (10_000, [(1_000, 1, 2), (5_000, 1, 4), (9_000, 2, 20), (10_000, 5, 80)]),
        # pyc: closed loop 5,000, under 25 ms up to 2,500 (50%).
        "pyc": (5_000, [(500, 2, 5), (2_500, 3, 24), (3_500, 6, 40), (5_000, 30, 300)]),
        # pyo: closed loop 4,000, under 25 ms up to 3,600 (90%).
        "pyo": (4_000, [(400, 2, 6), (3_600, 3, 22), (4_000, 30, 300)]),
    })


def test_capacity_table_and_servers_needed(folder):
    study = slo_report.load_study(folder)
    table = "\n".join(slo_report.capacity_table(study))
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(rows) == ["rs", "pyo", "pyc"]            # by capacity, highest first
    assert "| 9,000 (fails at 10,000) |" in rows["rs"]
    assert rows["rs"].endswith("| 90% | 2 |")             # 10,000 / 9,000 -> 2 servers
    assert rows["pyc"].endswith("| 50% | 4 |")            # 10,000 / 2,500
    assert rows["pyo"].endswith("| 90% | 3 |")            # 10,000 / 3,600 -> 3 (2.8)
    # 10 ms: rs passes at 5,000 (p99 4 ms), not at 9,000; pyc and pyo fail from 2,500 / 3,600.
    assert "| 5,000 (fails at 9,000) |" in rows["rs"]
    assert "| 500 (fails at 2,500) |" in rows["pyc"]


def test_pairs_are_chosen_by_facets_and_set_beside_the_closed_loop_ratio(folder):
    study = slo_report.load_study(folder)
    chosen = {(a, b): what for a, b, what in slo_report.chosen_pairs(study)}
    assert set(chosen) == {("pyc", "rs"), ("pyo", "rs")}   # never pyc vs pyo (same language)
    assert chosen[("pyc", "rs")] == "language only (the server layer)"
    server_layer = slo_report.pair(study, "pyc", "rs", chosen[("pyc", "rs")])
    assert (server_layer.fast, server_layer.slow) == ("rs", "pyc")
    assert server_layer.capacity_ratio == pytest.approx(9_000 / 2_500)
    assert server_layer.closed_ratio == pytest.approx(10_000 / 5_000)
    assert server_layer.sentence.startswith("The capacity ratio (3.60x) is wider than the "
                                            "closed-loop ratio (2.00x) because rs keeps p99 <= "
                                            "25 ms up to 90% of its closed-loop maximum and pyc up "
                                            "to 50% (p99 at the lowest rate measured: pyc "
                                            "5.0 ms, rs 2.0 ms)")
    runtime_too = slo_report.pair(study, "pyo", "rs", chosen[("pyo", "rs")])
    assert runtime_too.capacity_ratio == pytest.approx(9_000 / 3_600)
    assert "agree within 5%" in runtime_too.sentence  # 2.50x against 2.50x


def test_report_writes_slo_md_and_the_figure(folder):
    result = subprocess.run([sys.executable, "-m", "analysis.slo_report", str(folder)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    text = (folder / "slo.md").read_text()
    assert "![latency](slo_latency.png)" in text and (folder / "slo_latency.png").stat().st_size > 0
    assert "20,000 req/s against a trivial server" in text
    assert text.count("| rs | ladder |") == 4


def test_a_server_that_never_meets_the_objective_gets_no_ratio(tmp_path):
    folder = write_folder(tmp_path / "study", {
        "rs": (10_000, [(1_000, 1, 2), (10_000, 5, 80)]),
        "pyc": (5_000, [(500, 20, 40), (5_000, 30, 300)])})
    study = slo_report.load_study(folder)
    p = slo_report.pair(study, "pyc", "rs", "language only")
    assert p.capacity_ratio is None
    assert p.sentence.startswith("pyc has no capacity at p99 <= 25 ms")


def test_a_folder_without_open_loop_runs_is_one_line(tmp_path):
    folder = write_folder(tmp_path / "study", {"rs": (10_000, [])})
    result = subprocess.run([sys.executable, "-m", "analysis.slo_report", str(folder)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no open-loop (scenario `slo`) runs" in result.stderr
