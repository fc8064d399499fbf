"""The verify step: every server must answer the fixed requests like the reference, else the run
stops at the first difference, naming the server, the request and what differs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import verify
from bench_fake_server import synthetic_score
from bench_testlib import RUN_WITH_FAKES

ITEM_MAX = 100_000


def synthetic_answers(requests):
    """The oracle for the fake server's synthetic data (the role rankbench.reference plays)."""
    answers = []
    for req in requests:
        found = {i for i in req["item_ids"] if 1 <= i <= ITEM_MAX}
        answers.append(verify.Expected({i: synthetic_score(req["user_id"], i) for i in found}))
    return answers


@pytest.fixture(scope="module")
def requests():
    return verify.make_requests(200, seed=1, user_min=1, user_max=200_000, item_min=1,
                                item_max=ITEM_MAX)


def test_fixed_requests_are_reproducible_and_cover_the_edges(requests):
    again = verify.make_requests(200, seed=1, user_min=1, user_max=200_000, item_min=1,
                                 item_max=ITEM_MAX)
    assert requests == again
    sizes = {len(r["item_ids"]) for r in requests}
    assert {1, 10, 100, 1000} <= sizes
    assert any(len(set(r["item_ids"])) < len(r["item_ids"]) for r in requests)  # duplicates
    assert any(max(r["item_ids"]) > ITEM_MAX for r in requests)  # unknown ids
    assert any(r["top_k"] > len(r["item_ids"]) for r in requests)


def test_a_correct_server_passes_all_requests(fake_server, requests):
    port = fake_server("--data", "synthetic")
    report = verify.verify_server("fake", "127.0.0.1", port, True, requests,
                                  synthetic_answers(requests), 1e-5)
    assert report.requests == 200
    assert report.max_abs_diff <= 1e-12


def test_verify_stops_at_the_first_wrong_score(fake_server, requests):
    port = fake_server("--data", "synthetic", "--wrong-score-from", "17")
    with pytest.raises(verify.VerifyError) as caught:
        verify.verify_server("fake-wrong", "127.0.0.1", port, True, requests,
                             synthetic_answers(requests), 1e-5)
    err = caught.value
    assert err.server == "fake-wrong"
    assert err.index == 17
    assert err.request == requests[17]
    assert "position 0" in err.difference and "1.00e-03 > 1e-05" in err.difference
    assert str(err).startswith("fake-wrong differs on verify request 17: ")


def test_a_floor_is_checked_for_shape_only(fake_server, requests):
    """Scores off by 1e-3 are fine for a floor (no model), the shape and order are not."""
    port = fake_server("--data", "synthetic", "--wrong-score-from", "0")
    report = verify.verify_server("floor", "127.0.0.1", port, False, requests,
                                  synthetic_answers(requests), 1e-5)
    assert report.requests == 200


def _check(items, expected, top_k=3, real=True, tol=1e-5):
    report = verify.ServerReport("s", real)
    request = {"user_id": 1, "item_ids": list(expected.scores), "top_k": top_k}
    body = json.dumps({"user_id": 1, "items": [{"id": i, "score": s} for i, s in items]}).encode()
    return verify.check_answer(200, body, request, expected, real, tol, report), report


EXPECTED = verify.Expected({1: 0.9, 2: 0.5, 3: 0.500001, 4: 0.1})


def test_exact_answer_passes():
    diff, report = _check([(1, 0.9), (3, 0.500001), (2, 0.5)], EXPECTED)
    assert diff is None and report.near_tie_swaps == 0


def test_near_tie_may_swap_within_tolerance():
    diff, report = _check([(1, 0.9), (2, 0.5000006), (3, 0.5000005)], EXPECTED)
    assert diff is None and report.near_tie_swaps == 2


@pytest.mark.parametrize("items, top_k, real, fragment", [
    ([(1, 0.9), (2, 0.5)], 3, True, "2 items returned, expected 3"),
    ([(1, 0.9), (4, 0.1), (2, 0.5)], 3, True, "not sorted"),
    ([(1, 0.9), (3, 0.49), (2, 0.4)], 3, True, "scored 0.49000000, reference 0.50000100"),
    ([(1, 0.9), (4, 0.1)], 2, True, "expected id 3"),
    ([(1, 0.9), (1, 0.9)], 2, False, "duplicate ids"),
    ([(1, 0.9), (7, 0.5)], 2, False, "id 7, which is unknown or not requested"),
    ([(1, 0.0), (2, 0.0)], 2, False, None),  # a floor with constant scores: ties by id ascending
    ([(2, 0.0), (1, 0.0)], 2, False, "not sorted"),
])
def test_differences_are_named(items, top_k, real, fragment):
    diff, _ = _check(items, EXPECTED, top_k=top_k, real=real)
    if fragment is None:
        assert diff is None
    else:
        assert diff is not None and fragment in diff


def test_status_and_body_errors_are_differences():
    report = verify.ServerReport("s", True)
    request = {"user_id": 1, "item_ids": [1], "top_k": 1}
    assert "expected status 200, got 500" in verify.check_answer(
        500, b'{"error":"x"}', request, EXPECTED, True, 1e-5, report)
    assert "not JSON" in verify.check_answer(200, b"<html>", request, EXPECTED, True, 1e-5, report)
    assert "expected 404" in verify.check_answer(200, b"{}", request, verify.Expected(None), True,
                                                 1e-5, report)


def test_orchestrator_stops_before_any_load_on_a_wrong_server(dsn, model_dir, tmp_path):
    """Through `python -m bench` with the real oracle (database rows + rankbench.reference)."""
    env = dict(os.environ, DATABASE_URL=dsn)
    result = subprocess.run(
        [sys.executable, str(RUN_WITH_FAKES), "--servers", "fake-db,fake-wrong", "--profile", "quick",
         "--results", str(tmp_path), "--no-report"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verify: fake-db ok" in result.stdout
    first = result.stderr.splitlines()[0]
    assert first.startswith("bench: fake-wrong failed in verify: fake-wrong differs on verify "
                            "request 17: position 0: id "), result.stderr
    assert "[1/" not in result.stdout  # no load was run
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (run_dir / "runs.jsonl").exists()
    assert json.loads((run_dir / "verify.json").read_text())["ok"] is False
    assert not (tmp_path / "latest").exists()
