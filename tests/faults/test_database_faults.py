"""Issue 7, item 4: database faults, on the suite's throwaway cluster (never the shared one).

- outage under wrk load: the cluster is stopped (fast shutdown) and started again while wrk keeps
  sending valid requests and a probe sends one every 50 ms. While it is down every answer is a 503
  JSON error within OUTAGE_ANSWER_BOUND_S (no 500, no hang, no broken connection); once it is back
  the server answers 200 again within RECOVERY_BOUND_S, without being restarted. The time until
  throughput is back at 90 % of its level before the outage is measured from wrk's per-second
  counts; `full` asserts it is within RECOVERY_BOUND_S, `ci` only records it (a throughput ratio on
  a shared 2-core machine is not a correctness check);
- slow database: ACCESS EXCLUSIVE held on a table (blocks readers) -> every request gets a 503 JSON
  error within the server's statement timeout (+ slack); requests queued for a pool connection
  meanwhile within twice that; the pool works normally once the lock is gone;
- pool exhaustion: 512 connections against a pool of 8 -> queueing, every request answered 200.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from rankbench.servers import SERVERS

from . import record, servers
from .checks import error_problems
from .cluster import TableLock
from .conftest import assert_serves, log_size, new_log_trouble
from .corpus import VALID_REQUEST
from .profile import (OUTAGE_ANSWER_BOUND_S, RECOVERY_BOUND_S, STATEMENT_SLACK_S,
                      STATEMENT_TIMEOUT_S)
from .rawhttp import Connection, exchange

TIMELINE_LUA = Path(__file__).with_name("status_timeline.lua")


def wrk_binary() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is not installed (the database-fault tests load servers with it)")
    return wrk


def parse_wrk_line(stdout: str, script: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith('{"tool":"wrk"'):
            data = orjson.loads(line)
            if data.get("script") == script or script == "rank":
                return data
    raise AssertionError(f"wrk printed no JSON line for {script}: {stdout[-500:]!r}")


@pytest.fixture(scope="module")
def db_server(checked_server_name, fault_db):
    """A server of its own for this module: faults here must not leak into other tests."""
    fault_db.ensure_up()
    running = servers.start(checked_server_name, fault_db.url)
    yield running
    running.stop()


class Probe(threading.Thread):
    """One valid request every `interval` s on a kept-alive connection (reconnecting if needed);
    notes when each was sent and what came back."""

    def __init__(self, host: str, port: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.interval = host, port, interval
        self.results: list[tuple[float, float, str, list[str]]] = []   # (sent, latency, label, problems)
        self.halt = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.halt.is_set():
            sent = time.time()
            try:
                if conn is None:
                    conn = Connection(self.host, self.port, timeout=OUTAGE_ANSWER_BOUND_S + 5)
                conn.send(VALID_REQUEST)
                answer = conn.read_response()
                label = answer.label
                problems = error_problems(answer, VALID_REQUEST) if answer.outcome == "response" \
                    and answer.status >= 400 else []
                if answer.outcome != "response" or answer.keep_alive is False:
                    conn.close()
                    conn = None
            except OSError as exc:
                label, problems = f"error {type(exc).__name__}", []
                if conn is not None:
                    conn.close()
                conn = None
            self.results.append((sent, time.time() - sent, label, problems))
            self.halt.wait(self.interval)
        if conn is not None:
            conn.close()


def test_database_outage(server_name, db_server, db, fault_profile):
    server = db_server
    pid = server.process.pid
    offset = log_size(server)
    p = fault_profile
    total_s = math.ceil(p.outage_baseline_s + p.outage_down_s + p.outage_after_s + 4)
    wrk = subprocess.Popen([wrk_binary(), "-t1", "-c16", f"-d{total_s}s", "--timeout",
                            f"{OUTAGE_ANSWER_BOUND_S:.0f}s", "-s", str(TIMELINE_LUA),
                            f"http://{server.host}:{server.port}/rank"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wrk_started = time.time()
    probe = Probe(server.host, server.port)
    probe.start()
    try:
        time.sleep(p.outage_baseline_s)
        down_called = time.time()
        down_done = db.stop()
        time.sleep(p.outage_down_s)
        up_called = time.time()
        up_done = db.start()
        stdout, stderr = wrk.communicate(timeout=total_s + 30)
    finally:
        probe.halt.set()
        probe.join(OUTAGE_ANSWER_BOUND_S + 10)
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
        db.ensure_up()
    data = parse_wrk_line(stdout, "status_timeline")
    seconds = {row[0]: row[1:] for row in data["seconds"]}

    # Throughput before the outage: whole seconds after the first, before the stop began.
    before = [seconds.get(s, (0, 0, 0, 0))[0]
              for s in range(math.floor(wrk_started) + 2, math.floor(down_called))]
    baseline_rps = sum(before) / len(before) if before else 0.0
    # Back to 90 %: the first whole second after the cluster accepts connections again.
    recovered_s = None
    for s in range(math.ceil(up_done), math.floor(wrk_started) + total_s):
        if seconds.get(s, (0,))[0] >= 0.9 * baseline_rps > 0:
            recovered_s = s + 1 - up_done
            break
    outage = [r for r in probe.results if down_done <= r[0] and r[0] + r[1] <= up_called]
    outage_labels = sorted({r[2] for r in outage})
    outage_problems = sorted({q for r in outage for q in r[3]})
    first_ok = next((r[0] + r[1] - up_done for r in probe.results
                     if r[0] >= up_done and r[2] == "200"), None)
    other_5xx = sum(v[2] for v in seconds.values())
    other_status = sum(v[3] for v in seconds.values())
    n503 = sum(v[1] for v in seconds.values())
    socket_errors = {k: v for k, v in data["errors"].items() if k != "status" and v}
    probe_bad = sorted({r[2] for r in probe.results if r[2] not in ("200", "503")})
    trouble = new_log_trouble(server, offset)
    figures = {
        "baseline_rps": round(baseline_rps, 1), "stop_s": round(down_done - down_called, 2),
        "down_s": round(up_called - down_done, 2), "start_s": round(up_done - up_called, 2),
        "outage_probes": len(outage), "outage_labels": outage_labels,
        "outage_answer_max_s": round(max((r[1] for r in outage), default=0.0), 3),
        "first_200_after_restart_s": round(first_ok, 3) if first_ok is not None else None,
        "throughput_90pct_after_restart_s": round(recovered_s, 2) if recovered_s is not None else None,
        "wrk_requests": data["requests"], "wrk_503": n503, "wrk_other_5xx": other_5xx,
        "wrk_other_status": other_status, "wrk_socket_errors": socket_errors,
        "probe_unexpected": probe_bad, "stderr_trouble": trouble[:3],
        "timeline": [[s - math.floor(wrk_started), *seconds[s]] for s in sorted(seconds)]}
    record.record("db_outage", server=server_name, profile=p.name, **figures)

    assert server.process.poll() is None and server.process.pid == pid, \
        f"{server_name} exited during the outage ({server.process.returncode})"
    assert baseline_rps > 0, f"{server_name}: no successful request before the outage: {figures}"
    assert outage, f"no probe fell inside the outage window: {figures}"
    assert outage_labels == ["503"], (f"{server_name}: while the database was down the answers were "
                                      f"{outage_labels}, expected only 503: {figures}")
    assert not outage_problems, f"{server_name}: 503 answers are not JSON errors: {outage_problems}"
    assert figures["outage_answer_max_s"] <= OUTAGE_ANSWER_BOUND_S, figures
    assert other_5xx == 0 and other_status == 0 and not probe_bad, \
        f"{server_name}: answers other than 200/503 during the outage test: {figures}"
    assert not socket_errors, f"{server_name}: wrk saw socket errors or timeouts: {figures}"
    assert first_ok is not None and first_ok <= RECOVERY_BOUND_S, \
        f"{server_name}: no 200 within {RECOVERY_BOUND_S} s after the database was back: {figures}"
    if p.assert_throughput_recovery:
        assert recovered_s is not None and recovered_s <= RECOVERY_BOUND_S, (
            f"{server_name}: throughput not back to 90 % of {baseline_rps:.0f}/s within "
            f"{RECOVERY_BOUND_S} s of the restart: {figures}")
    assert not trouble, f"{server_name} logged unhandled errors: {trouble[:5]}"
    assert_serves(server, "after the database outage")


@pytest.mark.parametrize("table", ["users", "items"])
def test_slow_database(server_name, db_server, db, table):
    server = db_server
    timeout_s = STATEMENT_TIMEOUT_S[SERVERS[server_name].language]
    bound = timeout_s + STATEMENT_SLACK_S
    queued_bound = 2 * timeout_s + STATEMENT_SLACK_S
    pool = 8
    with TableLock(db.url, table):
        with ThreadPoolExecutor(pool + 4) as executor:
            answers = list(executor.map(
                lambda _: exchange(server.host, server.port, VALID_REQUEST,
                                   timeout=queued_bound + 10), range(pool + 4)))
    after = [exchange(server.host, server.port, VALID_REQUEST) for _ in range(3)]
    with ThreadPoolExecutor(16) as executor:
        burst = list(executor.map(lambda _: exchange(server.host, server.port, VALID_REQUEST),
                                  range(32)))
    times = sorted(a.elapsed_s for a in answers)
    figures = {"table": table, "statement_timeout_s": timeout_s,
               "labels": sorted({a.label for a in answers}),
               "answer_s_min": round(times[0], 2), "answer_s_max": round(times[-1], 2),
               "answer_s_first_8_max": round(times[pool - 1], 2),
               "after_release": sorted({a.label for a in after + burst})}
    record.record("slow_db", server=server_name, **figures)
    assert figures["labels"] == ["503"], \
        f"{server_name}: with {table} locked the answers were {figures['labels']}: {figures}"
    problems = sorted({p for a in answers for p in error_problems(a, VALID_REQUEST)})
    assert not problems, f"{server_name}: 503 answers are not JSON errors: {problems}"
    assert times[pool - 1] <= bound, (f"{server_name}: 503 took over the statement timeout "
                                      f"({timeout_s} s + {STATEMENT_SLACK_S} s slack): {figures}")
    assert times[-1] <= queued_bound, f"{server_name}: queued requests took too long: {figures}"
    assert figures["after_release"] == ["200"], \
        f"{server_name}: after the lock was released: {figures}"


def run_wrk(server, connections: int, duration_s: float, threads: int = 1) -> dict:
    """wrk with status_timeline.lua for `duration_s`; its JSON line."""
    argv = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{math.ceil(duration_s)}s",
            "--timeout", f"{OUTAGE_ANSWER_BOUND_S:.0f}s", "-s", str(TIMELINE_LUA),
            f"http://{server.host}:{server.port}/rank"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    return parse_wrk_line(out.stdout, "status_timeline")


def test_pool_exhaustion(server_name, db_server, db, fault_profile):
    server = db_server
    data = run_wrk(server, 512, fault_profile.pool_exhaustion_s, threads=2)
    counts = [sum(row[i] for row in data["seconds"]) for i in range(1, 5)]
    statuses = {"200": counts[0], "503": counts[1], "other_5xx": counts[2], "other": counts[3]}
    errors = {k: v for k, v in data["errors"].items() if v and k != "status"}
    latency = data["latency_us"]
    figures = {"connections": 512, "pool_size": 8, "requests": data["requests"],
               "rps": round(data["requests"] / (data["duration_us"] / 1e6), 1),
               "statuses": statuses, "socket_errors": errors,
               "p50_ms": round(latency["p50"] / 1000, 1), "p99_ms": round(latency["p99"] / 1000, 1),
               "max_ms": round(latency["max"] / 1000, 1)}
    record.record("pool_exhaustion", server=server_name, **figures)
    assert data["requests"] > 0, f"{server_name}: no request completed"
    assert statuses["200"] == data["requests"] and not errors, (
        f"{server_name}: 512 connections against a pool of 8 must queue without errors: {figures}")
    assert_serves(server, "after 512 connections against a pool of 8")
