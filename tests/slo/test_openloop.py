"""The open-loop generator on real processes: it sends the wrk script's request pool, its CSV
becomes the record's client object; its own limit against the trivial server is measured and
stated; a short `python -m bench.slo` on the fake server joins records to runs.jsonl."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import loadgen_compare, openloop
from bench.procs import Supervisor
from rankbench import config

HERE = Path(__file__).parent
RUN_SLO = HERE / "run_slo_with_fakes.py"
SHAPE = openloop.RequestShape(items=10, top_k=5, users=(1, 200_000), item_range=(1, 100_000),
                              seed=3, pool=50)


def ceiling_pool(shape: openloop.RequestShape) -> list[dict]:
    if not config.CEILING_BINARY.exists():
        pytest.fail(f"{config.CEILING_BINARY} is missing: run `make build`")
    out = subprocess.run([str(config.CEILING_BINARY), "--print-requests", str(shape.pool),
                          "--items", str(shape.items), "--seed", str(shape.seed)],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_the_bodies_are_the_wrk_scripts_pool_with_top_k():
    bodies = [json.loads(b) for b in openloop.request_bodies(SHAPE)]
    assert bodies == [dict(r, top_k=5) for r in ceiling_pool(SHAPE)]
    assert all(len(set(b["item_ids"])) == 10 for b in bodies)


def test_a_low_rate_run_sends_pool_requests_and_records_every_response(oha, fake_server, tmp_path):
    sent_file = tmp_path / "sent.txt"
    port = fake_server("--record-bodies", str(sent_file))
    bodies = openloop.write_bodies(tmp_path / "bodies.txt", openloop.request_bodies(SHAPE))
    csv_path = tmp_path / "oha.csv"
    argv = openloop.command(oha, f"http://127.0.0.1:{port}/rank", rate=50, duration_s=2,
                            connections=8, timeout_s=5, bodies=bodies, output=csv_path, threads=1)
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    hist, statuses, total_bytes, _ = openloop.parse_csv(csv_path)
    client = openloop.client_record(rate=50, duration_s=2, connections=8, timeout_s=5, hist=hist,
                                    statuses=statuses, total_bytes=total_bytes, threads=1)
    sent = [json.loads(line) for line in sent_file.read_text().splitlines()]
    pool = [json.loads(b) for b in bodies.read_bytes().splitlines()]
    assert client["requests"] == len(sent) > 0
    assert all(body in pool for body in sent)               # only the pool's requests
    assert statuses == {200: len(sent)}
    assert client["histogram_count"] == client["requests"] and client["non2xx"] == 0
    assert client["scheduled"] == 100                        # ticks at i/50 s for i = 0..99
    assert client["requests"] in (100, 101)                  # (+ the tick at 2 s, if sent)
    assert client["not_completed"] == client["errors"]["timeout"] == 0
    assert client["latency_us"]["p50"] <= client["latency_us"]["p99"] <= client["latency_us"]["max"]


def test_the_generators_own_limit_is_measured_and_stated(oha, tmp_path):
    supervisor = Supervisor()
    try:
        facts = loadgen_compare.generator_limit(supervisor, tmp_path, rates=(200, 400), seconds=3)
    finally:
        supervisor.stop_all()
    assert facts["tool"] == "oha" and facts["version"].endswith(openloop.VERSION)
    runs = facts["runs"]
    assert [r["rate"] for r in runs] in ([200], [200, 400])
    assert all(r["arrived_rps"] > 0 and r["cpu_us_per_req"] > 0 for r in runs)
    sustained = [r["rate"] for r in runs if r["sustained"]]
    assert facts["max_rps"] == (max(sustained) if sustained else None)
    assert facts["tested_up_to"] == runs[-1]["rate"]
    # Kept for bench.slo, which reads it back only for this generator version and machine.
    loadgen_compare.write_limit(dict(facts, max_rps=123), tmp_path / "limit.json")
    assert loadgen_compare.read_limit(tmp_path / "limit.json")["max_rps"] == 123
    loadgen_compare.write_limit(dict(facts, max_rps=123, version="oha 0.0"), tmp_path / "old.json")
    assert loadgen_compare.read_limit(tmp_path / "old.json") is None


def test_a_short_open_loop_study_joins_runs_jsonl(oha, dsn, model_dir, tmp_path):
    # A generator limit written by hand, low enough that the second rate is flagged.
    limit_file = tmp_path / "limit.json"
    loadgen_compare.write_limit({"tool": "oha", "version": openloop.version(), "max_rps": 20,
                                 "tested_up_to": 20, "cpus": os.cpu_count()}, limit_file)
    env = dict(os.environ, DATABASE_URL=dsn)
    for name in ("SERVERS", "ITEMS", "CONCURRENCY", "DURATION", "WARMUP", "REPEATS", "WORKERS",
                 "POOL", "PIN", "SLO_P99_MS", "SLO_SHARES", "SLO_REFINE", "SLO_DURATION",
                 "SLO_FROM", "SLO_CONNECTIONS", "SLO_THREADS"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(RUN_SLO), "--servers", "fake-db", "--shares", "0.02,0.05",
         "--refine", "0", "--slo-duration", "3", "--duration", "3", "--warmup", "1",
         "--no-verify", "--results", str(tmp_path), "--limit-file", str(limit_file)],
        capture_output=True, text=True, timeout=600, env=env, cwd=config.ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    records = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    closed, *slo = records
    assert (closed["scenario"], closed["slo_role"], closed["client"]["tool"]) == \
        ("rank", "closed-loop maximum", "wrk")
    maximum = closed["client"]["goodput_rps"]
    assert [r["scenario"] for r in slo] == ["slo", "slo"]
    assert [r["offered_rps"] for r in slo] == [max(1.0, round(s * maximum)) for s in (0.02, 0.05)]
    assert [r["repeat"] for r in slo] == [0, 1] and [r["rate_step"] for r in slo] == ["ladder"] * 2
    for r in slo:
        client = r["client"]
        assert r["schema"] == 2 and client["tool"] == "oha" and client["mode"] == "open-loop"
        assert r["closed_loop_max_rps"] == maximum and r["duration_s"] == 3.0
        assert client["requests"] > 0 and client["histogram_count"] == client["requests"]
        assert r["achieved_rps"] == client["rps"]
        assert r["resources"]["load"]["measured"] == "oha /proc CPU over its sending window"
        assert r["resources"]["load"]["cpu_s"] > 0
        assert r["resources"]["server"]["cpu_s"] > 0 and r["resources"]["db"]["cpu_s"] > 0
        assert set(r["objectives"]) == {"10", "25", "50"}
        assert r["generator"]["limit_rps"] == 20
        flagged = [w for w in r["warnings"] if "own measured limit" in w]
        assert bool(flagged) == (r["offered_rps"] > 0.8 * 20)
    env_json = json.loads((folder / "env.json").read_text())
    assert env_json["slo"]["generator"]["limit"]["max_rps"] == 20
    assert env_json["slo"]["requests"]["items"] == 10
    assert (folder / "openloop_bodies.txt").read_bytes().count(b"\n") == openloop.POOL_REQUESTS
    assert (folder / "slo.md").exists() and (folder / "slo_latency.png").exists()


def test_unanswered_requests_are_errors_except_ticks_skipped_in_the_last_20_ms():
    def client(requests: int) -> dict:
        return openloop.client_record(rate=1000, duration_s=10, connections=8, timeout_s=5,
                                      hist=[[900, requests]], statuses={200: requests},
                                      total_bytes=0, threads=1)

    assert client(10_000)["errors"]["timeout"] == 0
    assert client(9_980)["errors"]["timeout"] == 0        # 20 ticks skipped by a late generator
    late = client(9_900)
    assert late["scheduled"] == 10_000
    assert late["not_completed"] == late["errors"]["timeout"] == 80
