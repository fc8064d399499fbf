"""docs/architecture.md's recipe for adding a server, proven: a throwaway registry entry (py-none's
stack under another name and port, tests/recipe_plugin.py) is picked up by the conformance suite, the
bench plan and the report with no other edit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rankbench.config import ROOT

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from recipe_names import RECIPE_NAME  # noqa: E402  (importing the plugin would register it)


def _env(dsn: str) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=dsn, PYTHONPATH=f"{TESTS}:{ROOT}")
    for name in ("SERVERS", "ITEMS", "CONCURRENCY", "DURATION", "WARMUP", "REPEATS", "WORKERS",
                 "POOL", "PIN", "RANKBENCH_SERVERS", "RANKBENCH_WORKERS"):
        env.pop(name, None)
    return env


def test_conformance_suite_runs_a_newly_registered_server(dsn, model_dir):
    env = dict(_env(dsn), RANKBENCH_SERVERS=RECIPE_NAME, RANKBENCH_WORKERS="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "recipe_plugin", "-p", "no:cacheprovider",
         str(TESTS / "conformance" / "test_conformance_rank.py"),
         str(TESTS / "conformance" / "test_conformance_stats.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    ran = [line for line in result.stdout.splitlines() if f"[{RECIPE_NAME}-w1" in line]
    passed = [line for line in ran if "PASSED" in line]
    assert len(passed) >= 10 and not [line for line in ran if "FAILED" in line or "ERROR" in line]


def test_bench_and_report_pick_up_a_newly_registered_server(dsn, model_dir, tmp_path):
    runner = ("import recipe_plugin, sys; from bench.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", runner, "--servers", RECIPE_NAME, "--profile", "quick",
         "--duration", "1", "--warmup", "0", "--no-ceiling", "--results", str(tmp_path)],
        cwd=ROOT, env=_env(dsn), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    run_dir = (tmp_path / "latest").resolve()
    records = [json.loads(line) for line in (run_dir / "runs.jsonl").read_text().splitlines()]
    assert [r["server"] for r in records] == [RECIPE_NAME]
    env = json.loads((run_dir / "env.json").read_text())
    assert env["servers"][RECIPE_NAME]["role"] == "floor"
    assert f"--server-name {RECIPE_NAME}" in " ".join(env["servers"][RECIPE_NAME]["command"])
    report = (run_dir / "report.md").read_text()
    assert RECIPE_NAME in report
