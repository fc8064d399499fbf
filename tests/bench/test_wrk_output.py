"""The JSON line of wrk_scripts/rank.lua, parsed from a recorded real run.

The fixture is the full stdout of
    wrk -t1 -c8 -d2s --timeout 10s -s wrk_scripts/rank.lua http://127.0.0.1:PORT/rank -- items=10 top_k=5 seed=3
against tests/bench/bench_fake_server.py (wrk debian/4.1.0), human text included.
"""
from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from bench import wrk
from rankbench import histogram

FIXTURE = Path(__file__).parent / "fixtures" / "wrk_rank_sample.txt"
CONNECTIONS = 8


@pytest.fixture(scope="module")
def parsed() -> dict:
    return wrk.parse_output(FIXTURE.read_text())


def test_json_line_is_found_among_wrk_human_text(parsed):
    assert parsed["tool"] == "wrk" and parsed["script"] == "rank"
    assert parsed["config"] == {"items": 10, "top_k": 5, "user_min": 1, "user_max": 200000,
                                "item_min": 1, "item_max": 100000, "seed": 3, "pool": 1000}
    assert parsed["requests"] == 38946
    assert parsed["duration_us"] == 2100034
    assert parsed["errors"] == {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    assert set(parsed["latency_us"]) == {"min", "mean", "stdev", "max", "p50", "p75", "p90", "p95",
                                         "p99", "p99.9", "p99.99"}


def test_our_percentiles_match_wrks_on_its_own_histogram(parsed):
    corrected = [[int(v), int(c)] for v, c in parsed["histogram"]]
    assert corrected == sorted(corrected)
    for name, p in histogram.PERCENTILES:
        assert histogram.percentile(corrected, p) == parsed["latency_us"][name], name
    summary = histogram.summary(corrected)
    assert summary["max"] == parsed["latency_us"]["max"]
    assert summary["mean"] == pytest.approx(parsed["latency_us"]["mean"], abs=1e-3)
    assert summary["stdev"] == pytest.approx(parsed["latency_us"]["stdev"], abs=1e-3)


def test_undoing_wrks_omission_correction_gives_one_value_per_request(parsed):
    corrected = [[int(v), int(c)] for v, c in parsed["histogram"]]
    interval = histogram.co_interval(parsed["duration_us"], parsed["requests"], CONNECTIONS)
    assert interval == 2100034 // (38946 // 8)
    measured = histogram.co_uncorrect(corrected, interval)
    assert histogram.count(corrected) > parsed["requests"]  # wrk added synthetic values
    assert histogram.count(measured) == parsed["requests"]
    assert histogram.co_correct(measured, interval) == corrected


def test_client_record(parsed):
    client = wrk.client_record(parsed, CONNECTIONS)
    assert client["tool"] == "wrk"
    assert client["requests"] == 38946
    assert client["rps"] == pytest.approx(38946 / 2.100034, abs=0.01)
    assert client["non2xx"] == 0
    assert client["histogram_count"] == 38946
    assert client["latency_us_wrk_corrected"]["p99"] == 3429
    # Measured latencies are below wrk's corrected ones where the correction added values.
    assert client["latency_us"]["p75"] <= client["latency_us_wrk_corrected"]["p75"]
    assert client["latency_us"]["max"] == 11382
    assert set(client["latency_us"]) == {"mean", "stdev", "max", "p50", "p75", "p90", "p95", "p99",
                                         "p99.9", "p99.99"}


def test_load_cpu_is_taken_between_init_and_done(parsed):
    """rank.lua reports wrk's process CPU after building its request pool and when done() starts."""
    assert parsed["cpu_s"] == {"after_init": 0.005515, "at_done": 0.516027}
    assert wrk.window_cpu_s(parsed) == pytest.approx(0.510512)
    assert wrk.window_cpu_s({"requests": 1}) is None  # another script: fall back to wait4


def test_wrong_connection_count_is_detected(parsed):
    with pytest.raises(wrk.WrkOutputError):
        wrk.client_record(parsed, 1)


@pytest.mark.parametrize("text", [
    "unable to connect to 127.0.0.1:1 Connection refused\n",
    "Running 2s test @ http://127.0.0.1:1/rank\n  1 threads and 8 connections\n",
    '{"tool":"wrk","script":"rank","requests":1}\n',
    '{"tool":"wrk", broken\n',
])
def test_output_without_a_usable_json_line_is_an_error(text):
    with pytest.raises(wrk.WrkOutputError):
        wrk.parse_output(text)


def _brute_force_correct(raw, interval):
    """wrk's stats_correct, transcribed over a dict."""
    data = {v: c for v, c in raw}
    top = max(data)
    for n in range(interval * 2, top + 1):
        count, m = data.get(n, 0), n - interval
        while count and m > interval:
            data[m] = data.get(m, 0) + count
            m -= interval
    return [[v, c] for v, c in sorted(data.items()) if c]


@pytest.mark.parametrize("seed", range(40))
def test_correction_and_its_inverse_against_wrks_algorithm(seed):
    rng = random.Random(seed)
    scale = rng.choice([50, 500, 5000])
    raw = histogram.from_values(int(rng.expovariate(1 / scale)) + rng.randint(1, 30)
                                for _ in range(rng.randint(1, 2000)))
    interval = rng.randint(1, 400)
    corrected = histogram.co_correct(raw, interval)
    assert corrected == _brute_force_correct(raw, interval)
    assert histogram.co_uncorrect(corrected, interval) == raw


def test_merge_and_percentile_against_numpy_on_raw_samples():
    import numpy as np
    rng = np.random.default_rng(7)
    a, b = rng.integers(100, 5000, 3001), rng.integers(50, 9000, 1999)
    merged = histogram.merge_pairs(histogram.from_values(a.tolist()), histogram.from_values(b.tolist()))
    both = np.sort(np.concatenate([a, b]))
    assert histogram.count(merged) == both.size
    for _, p in histogram.PERCENTILES:
        rank = int(np.floor(p / 100 * both.size + 1))  # wrk's rank, 1-based
        assert histogram.percentile(merged, p) == both[min(rank, both.size) - 1]


def _bodies_sent_by_wrk(fake_server, tmp_path, name, *script_args):
    log = tmp_path / f"{name}.bodies"
    port = fake_server("--data", "synthetic", "--record-bodies", str(log))
    out = subprocess.run(["wrk", "-t2", "-c2", "-d1s", "-s", str(wrk.script_path("rank")),
                   f"http://127.0.0.1:{port}/rank", "--", *script_args],
                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert wrk.parse_output(out.stdout)["threads"] == 2
    deadline = time.monotonic() + 10
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_rank_lua_sends_valid_distinct_ids_with_a_seed_per_thread(fake_server, tmp_path):
    args = ("items=25", "top_k=7", "user_min=10", "user_max=20", "item_min=500", "item_max=600",
            "pool=50", "seed=9")
    bodies = _bodies_sent_by_wrk(fake_server, tmp_path, "a", *args)
    assert len(bodies) > 100
    for body in bodies:
        assert set(body) == {"user_id", "item_ids", "top_k"}
        assert body["top_k"] == 7 and 10 <= body["user_id"] <= 20
        ids = body["item_ids"]
        assert len(ids) == 25 == len(set(ids)) and all(500 <= i <= 600 for i in ids)
    distinct = {json.dumps(b, sort_keys=True) for b in bodies}
    # Each thread cycles through its own 50 pre-built requests: two seeds, up to 100 bodies.
    assert 50 < len(distinct) <= 100
    again = _bodies_sent_by_wrk(fake_server, tmp_path, "b", *args)
    # The same seed builds the same requests: a run is reproducible, every server gets the same.
    assert {json.dumps(b, sort_keys=True) for b in again} == distinct
