"""`python -m bench` end to end against fake servers: records, failures, and cleanup on Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench_testlib import RUN_WITH_FAKES


def bench_argv(*args: str) -> list[str]:
    return [sys.executable, str(RUN_WITH_FAKES), *args]


def bench_env(dsn: str) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=dsn)
    for name in ("SERVERS", "ITEMS", "CONCURRENCY", "DURATION", "WARMUP", "REPEATS", "WORKERS",
                 "POOL", "PIN"):
        env.pop(name, None)
    return env


def test_quick_run_writes_one_record_per_server_and_the_ceiling(dsn, model_dir, tmp_path):
    result = subprocess.run(
        bench_argv("--servers", "fake-db,fake-floor", "--profile", "quick", "--duration", "2",
                   "--results", str(tmp_path), "--no-report"),
        capture_output=True, text=True, timeout=300, env=bench_env(dsn))
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = (tmp_path / "latest").resolve()
    assert run_dir.parent == tmp_path.resolve() and run_dir.name.endswith("Z")
    records = [json.loads(line) for line in (run_dir / "runs.jsonl").read_text().splitlines()]
    assert [r["server"] for r in records] == ["fake-db", "fake-floor", "db-ceiling",
                                              "db-ceiling-pgbench"]
    for position, record in enumerate(records):
        assert record["schema"] == 2
        assert (record["scenario"], record["candidates"], record["concurrency"], record["repeat"]) \
            == ("rank", 10, 32, 0)
        assert record["position"] == position
        assert record["order"] == ["fake-db", "fake-floor", "db-ceiling", "db-ceiling-pgbench"]
        assert (record["duration_s"], record["warmup_s"]) == (2.0, 1.0)
        client = record["client"]
        assert client["requests"] > 0 and client["rps"] > 0
        assert sum(client["errors"].values()) == 0 and client["non2xx"] == 0
        assert client["ok"] == client["requests"] and record["valid"] is True
        assert record["invalid_reasons"] == []
        assert client["goodput_rps"] == pytest.approx(client["ok"] / client["duration_s"], rel=1e-3)
        assert client["histogram_count"] == client["requests"]
        assert client["latency_us"]["p50"] <= client["latency_us"]["p99"] <= client["latency_us"]["max"]
        assert record["resources"]["load"]["cpu_s"] > 0
        assert record["resources"]["load"]["cores_used"] == pytest.approx(
            record["resources"]["load"]["cpu_s"] / client["duration_s"], rel=1e-3)
        assert record["resources"]["db"]["cpu_s"] >= 0
        assert record["fairness"]["pool_size"] == 8
    db_server, floor, ceiling, pgbench = records
    assert db_server["client"]["tool"] == "wrk"
    assert ceiling["client"]["tool"] == "rankbench-ceiling"
    assert ceiling["client"]["result_format"] == "binary"
    assert pgbench["client"]["tool"] == "pgbench" and pgbench["client"]["result_format"] == "text"
    assert db_server["resources"]["load"]["measured"] == "wrk os.clock() init..done"
    assert db_server["resources"]["load"]["cpu_s"] <= db_server["resources"]["load"]["process_cpu_s"]
    assert db_server["stages"]["total"]["count"] >= db_server["client"]["requests"]
    server_cpu = db_server["resources"]["server"]
    assert server_cpu["cpu_us_per_req"] > 0
    assert server_cpu["user_s"] + server_cpu["system_s"] == pytest.approx(server_cpu["cpu_s"],
                                                                           abs=2e-4)
    assert server_cpu["cores_used"] == pytest.approx(
        server_cpu["cpu_s"] / db_server["client"]["duration_s"], rel=1e-3)
    assert db_server["client"]["bytes_per_response"] > 0
    assert db_server["resources"]["db"]["cpu_s"] > 0  # its backends were found and measured
    assert db_server["db_statements"] and set(db_server["db_statements"]) <= set(
        ceiling["client"]["statements"])
    assert db_server["server_info"]["health"] == {"status": "ok", "server": "fake-db"}
    for c in (ceiling, pgbench):
        assert c["stages"] == {} and c["resources"]["server"] is None
        assert c["client"]["clients"] == 8  # min(concurrency 32, pool 8)
        assert c["client"]["statements"] == [
            "SELECT features FROM users WHERE id = $1",
            "SELECT id, features FROM items WHERE id = ANY($1)"]
    env = json.loads((run_dir / "env.json").read_text())
    assert env["complete"] is True and env["settings"]["profile"] == "quick"
    assert env["postgresql"] and env["tools"]["wrk"].startswith("wrk")
    assert set(env["pinning"]) == {"enabled", "server_cpus", "postgres_and_load_cpus"}
    assert json.loads((run_dir / "verify.json").read_text())["ok"] is True
    assert env["servers"]["fake-db"]["runtime"] == "fake-model"
    assert env["servers"]["fake-floor"]["role"] == "floor"
    assert env["calibration"]["python_ns_per_iter"] > 0
    assert env["calibration"]["native_ns_per_iter"] > 0
    verify = json.loads((run_dir / "verify.json").read_text())
    assert all(s["mean_body_bytes"] > 0 for s in verify["servers"])
    assert "[4/4] db-ceiling-pgbench" in result.stdout and "ETA" in result.stdout


def test_a_server_that_fails_to_start_is_named_with_its_stderr(dsn, model_dir, tmp_path):
    result = subprocess.run(
        bench_argv("--servers", "fake-crash", "--profile", "quick", "--results", str(tmp_path),
                   "--no-report"),
        capture_output=True, text=True, timeout=120, env=bench_env(dsn))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "bench: fake-crash failed in verify: start: exited with code 3 before " \
                       "/health answered"
    assert lines[1].startswith("  last lines of ") and lines[1].endswith(
        "logs/verify-fake-crash.stderr.log:")
    assert lines[2:4] == ["    starting fake server", "    fake-crash: cannot load the model"]
    assert lines[4].startswith("bench: partial results kept in ")
    assert "Traceback" not in result.stderr


def test_unknown_server_is_one_line(dsn, tmp_path):
    result = subprocess.run(bench_argv("--servers", "nope", "--results", str(tmp_path)),
                            capture_output=True, text=True, timeout=60, env=bench_env(dsn))
    assert result.returncode == 1
    assert result.stderr.startswith("bench: checks: unknown server(s) nope; registered: py-torch")
    assert len(result.stderr.strip().splitlines()) == 1


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_mid_run_leaves_no_process_behind(dsn, model_dir, tmp_path, sig, code):
    """fake-stubborn ignores SIGTERM and has a forked worker: the harness must kill both, and wrk."""
    proc = subprocess.Popen(
        bench_argv("--servers", "fake-stubborn", "--profile", "quick", "--duration", "60",
                   "--warmup", "0", "--no-verify", "--no-ceiling", "--results", str(tmp_path),
                   "--no-report"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env(dsn))
    try:
        deadline = time.monotonic() + 120
        seen: dict[int, psutil.Process] = {}
        while time.monotonic() < deadline:
            for child in _descendants(proc.pid):
                seen[child.pid] = child
            names = {p.name() for p in seen.values() if _alive(p)}
            if "wrk" in names and len(seen) >= 3:  # server, its worker, wrk
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("the measured run did not start")
        time.sleep(0.5)
        for child in _descendants(proc.pid):
            seen[child.pid] = child
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, out + err
    assert "interrupted; stopped every process it had started (" in err
    assert "wrk" in err and "fake-stubborn" in err
    survivors = [p for p in seen.values() if _alive(p)]
    assert survivors == [], [(p.pid, p.cmdline()) for p in survivors]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (tmp_path / "latest").exists()  # an interrupted run is not "latest"
    assert (run_dir / "env.json").exists()
