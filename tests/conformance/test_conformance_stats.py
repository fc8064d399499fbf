"""GET /stats and POST /stats/reset: counts that match the requests sent, merged over all workers.

Requests go out on separate connections, so with --workers W > 1 the kernel spreads them over the
workers; /stats is then read on several fresh connections (answered by different workers) and must
show the same merged figures every time."""
from __future__ import annotations

import pytest
from conformance_http import rank_body

STAGES = ("parse", "db", "pre", "infer", "post", "total")
STAGE_KEYS = {"count", "sum_us", "mean_us", "p50_us", "p90_us", "p99_us", "max_us"}
READS = 8


def read_stats(server) -> dict:
    with server.connect() as conn:
        response = conn.request("GET", "/stats")
    assert response.status == 200, response
    assert response.headers.get("content-type", "").startswith("application/json")
    return response.json()


def reset(server) -> None:
    with server.connect() as conn:
        response = conn.request("POST", "/stats/reset")
    assert response.status == 204, response
    assert response.body == b""


def one_request(server, body: bytes) -> int:
    with server.connect() as conn:
        return conn.request("POST", "/rank", body).status


def stats_everywhere(server) -> list[dict]:
    """/stats from several fresh connections (with W > 1, from different workers)."""
    return [read_stats(server) for _ in range(READS)]


def test_stats_shape(server):
    stats = read_stats(server)
    assert stats["server"] == server.name
    assert stats["backend"] == server.spec.backend
    assert stats["workers"] == server.workers
    assert isinstance(stats["requests"], int) and isinstance(stats["errors"], int)
    assert set(stats["stages"]) >= set(STAGES)
    for name in STAGES:
        assert set(stats["stages"][name]) >= STAGE_KEYS, (name, stats["stages"][name])


def test_counts_match_requests_sent_on_every_worker(server):
    reset(server)
    for snapshot in stats_everywhere(server):
        assert snapshot["requests"] == 0 and snapshot["errors"] == 0, snapshot
        assert all(snapshot["stages"][name]["count"] == 0 for name in STAGES), snapshot["stages"]

    successes = 40
    for i in range(successes):
        assert one_request(server, rank_body(100 + i, [1 + i, 2 + i, 3 + i], 2)) == 200
    # Traffic that is not /rank is not counted.
    with server.connect() as conn:
        assert conn.request("GET", "/health").status == 200
        assert conn.request("GET", "/nope").status == 404

    for snapshot in stats_everywhere(server):
        assert snapshot["requests"] == successes, snapshot
        assert snapshot["errors"] == 0, snapshot
        for name in STAGES:
            stage = snapshot["stages"][name]
            assert stage["count"] == successes, (name, stage)
            assert 0 < stage["p50_us"] <= stage["p90_us"] <= stage["p99_us"] <= stage["max_us"], \
                (name, stage)
            assert stage["mean_us"] == pytest.approx(stage["sum_us"] / stage["count"], rel=1e-3)
            assert stage["mean_us"] <= stage["max_us"] * 1.0001, (name, stage)
        total = snapshot["stages"]["total"]["sum_us"]
        inner = sum(snapshot["stages"][name]["sum_us"] for name in STAGES[:-1])
        assert inner <= total * 1.001, f"stages add up to more than total: {inner} > {total}"

    if server.workers > 1 and "per_worker" in snapshot:
        # Not in the contract, but when a server reports it: every worker served some requests.
        served = [w.get("requests", 0) for w in snapshot["per_worker"]]
        assert len(served) == server.workers and all(served), served

    errors = [rank_body(10**15, [1], 1), rank_body(10**15 + 1, [1], 1), b"{broken",
              rank_body(1, [], 1), rank_body(1, [1], 0)]
    statuses = [one_request(server, body) for body in errors]
    with server.connect() as conn:
        statuses.append(conn.request("GET", "/rank").status)
    assert statuses == [404, 404, 400, 400, 400, 405]
    for snapshot in stats_everywhere(server):
        assert snapshot["requests"] == successes + len(statuses), snapshot
        assert snapshot["errors"] == len(statuses), snapshot


def test_reset_clears_every_worker(server):
    for i in range(12):
        assert one_request(server, rank_body(7 + i, [5, 6], 1)) == 200
    assert read_stats(server)["requests"] >= 12
    reset(server)
    for snapshot in stats_everywhere(server):
        assert snapshot["requests"] == 0 and snapshot["errors"] == 0, snapshot
        assert snapshot["stages"]["total"]["count"] == 0, snapshot["stages"]["total"]
    assert one_request(server, rank_body(3, [5, 6], 1)) == 200
    for snapshot in stats_everywhere(server):
        assert snapshot["requests"] == 1 and snapshot["stages"]["total"]["count"] == 1, snapshot
