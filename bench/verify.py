"""The verify step: before any load, every server answers the same fixed requests correctly.

Requests come from a seeded generator (mixed sizes 1..1000, some duplicate and unknown item ids,
top_k below and above the number of candidates). The expected answer is computed by the plain-numpy
reference model (rankbench.reference) on the rows read from the database. A real-scoring server must
return the same ids in the same order with scores within the tolerance; two ids may trade places
only when their reference scores are themselves within 2x the tolerance (a near-tie that float32
rounding can legitimately flip). Floors (no model) must return a well-formed answer: the right
number of found ids, no duplicates, sorted by their own scores with ties by id. The first difference
stops the step with the server, the request and what differs.
"""
from __future__ import annotations

import http.client
import json
import math
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class VerifyError(RuntimeError):
    def __init__(self, server: str, index: int, request: dict, difference: str):
        body = json.dumps(request, separators=(",", ":"))
        if len(body) > 300:
            body = body[:300] + f"... ({len(request['item_ids'])} item ids)"
        super().__init__(f"{server} differs on verify request {index}: {difference}; request: {body}")
        self.server = server
        self.index = index
        self.request = request
        self.difference = difference


@dataclass(frozen=True)
class Expected:
    """The reference answer: the score of every found item (None if the user does not exist)."""
    scores: dict[int, float] | None

    def ranked(self, top_k: int) -> list[tuple[int, float]]:
        ordered = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return ordered[:top_k]


@dataclass
class ServerReport:
    server: str
    real_scores: bool
    requests: int = 0
    max_abs_diff: float = 0.0
    near_tie_swaps: int = 0
    items_checked: int = 0
    body_bytes: int = 0        # response bodies of the fixed requests: equal work on the wire
    notes: list[str] = field(default_factory=list)

    @property
    def mean_body_bytes(self) -> float | None:
        return round(self.body_bytes / self.requests, 2) if self.requests else None

    def as_json(self) -> dict:
        return {"server": self.server, "real_scores": self.real_scores, "requests": self.requests,
                "items_checked": self.items_checked, "max_abs_diff": self.max_abs_diff,
                "near_tie_swaps": self.near_tie_swaps, "mean_body_bytes": self.mean_body_bytes,
                "ok": True}


def make_requests(n: int, seed: int, user_min: int, user_max: int, item_min: int, item_max: int,
                  sizes: tuple[int, ...] = (1, 10, 100, 1000)) -> list[dict]:
    rng = random.Random(seed)
    requests = []
    span = item_max - item_min + 1
    for i in range(n):
        size = sizes[(i // 2) % len(sizes)] if i % 2 == 0 else rng.randint(1, 1000)
        size = min(size, span)
        ids = rng.sample(range(item_min, item_max + 1), size)
        if i % 7 == 3 and size > 2:  # duplicates: scored once
            ids[-1] = ids[0]
        if i % 11 == 5 and size > 2:  # unknown ids: left out
            ids[-2] = item_max + 1 + rng.randint(0, 10**6)
        top_k = rng.choice((1, 5, 10, 20, 100, 1000))
        requests.append({"user_id": rng.randint(user_min, user_max), "item_ids": ids, "top_k": top_k})
    return requests


def reference_answers(requests: list[dict], users: dict[int, list[float]],
                      items: dict[int, list[float]], score_fn: Callable[[np.ndarray], np.ndarray]
                      ) -> list[Expected]:
    answers = []
    for req in requests:
        user = users.get(req["user_id"])
        if user is None:
            answers.append(Expected(None))
            continue
        found = [i for i in dict.fromkeys(req["item_ids"]) if i in items]
        if not found:
            answers.append(Expected({}))
            continue
        x = np.array([user + items[i] for i in found], dtype=np.float32)
        scores = score_fn(x)
        answers.append(Expected({i: float(s) for i, s in zip(found, scores)}))
    return answers


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_answer(status: int, body: bytes, request: dict, expected: Expected, real_scores: bool,
                 tolerance: float, report: ServerReport) -> str | None:
    """None if the answer is right, else a sentence saying what differs."""
    if expected.scores is None:
        return None if status == 404 else f"expected 404 for an unknown user, got {status}"
    if status != 200:
        return f"expected status 200, got {status}: {body[:200]!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"body is not JSON: {body[:200]!r}"
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        return f"body has no `items` list: {body[:200]!r}"
    if data.get("user_id") != request["user_id"]:
        return f"user_id {data.get('user_id')!r}, expected {request['user_id']}"
    got = data["items"]
    want = expected.ranked(request["top_k"])
    if len(got) != len(want):
        return f"{len(got)} items returned, expected {len(want)}"
    ids, scores = [], []
    for pos, entry in enumerate(got):
        if not isinstance(entry, dict) or type(entry.get("id")) is not int or \
                not _is_number(entry.get("score")):
            return f"item {pos} is not {{\"id\": int, \"score\": number}}: {entry!r}"
        if entry["id"] not in expected.scores:
            return f"item {pos} has id {entry['id']}, which is unknown or not requested"
        ids.append(entry["id"])
        scores.append(float(entry["score"]))
    if len(set(ids)) != len(ids):
        return f"duplicate ids in the answer: {ids}"
    for pos in range(len(ids) - 1):
        if scores[pos] < scores[pos + 1] or (scores[pos] == scores[pos + 1] and ids[pos] > ids[pos + 1]):
            return (f"not sorted by score descending, ties by id: position {pos} (id {ids[pos]}, "
                    f"{scores[pos]!r}) before position {pos + 1} (id {ids[pos + 1]}, {scores[pos + 1]!r})")
    report.items_checked += len(ids)
    if not real_scores:
        return None
    for pos, (got_id, got_score) in enumerate(zip(ids, scores)):
        ref = expected.scores[got_id]
        diff = abs(got_score - ref)
        report.max_abs_diff = max(report.max_abs_diff, diff)
        if diff > tolerance:
            return (f"position {pos}: id {got_id} scored {got_score:.8f}, reference {ref:.8f} "
                    f"(|diff| {diff:.2e} > {tolerance:g})")
        want_id, want_score = want[pos]
        if got_id != want_id:
            if abs(ref - want_score) > 2 * tolerance:
                return (f"position {pos}: id {got_id} (reference {ref:.8f}), expected id {want_id} "
                        f"(reference {want_score:.8f})")
            report.near_tie_swaps += 1
    return None


def post_json(conn: http.client.HTTPConnection, path: str, payload: dict) -> tuple[int, bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def verify_server(server: str, host: str, port: int, real_scores: bool, requests: list[dict],
                  answers: list[Expected], tolerance: float, timeout_s: float = 30.0) -> ServerReport:
    report = ServerReport(server, real_scores)
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        for index, (request, expected) in enumerate(zip(requests, answers)):
            try:
                status, body = post_json(conn, "/rank", request)
            except (OSError, http.client.HTTPException) as exc:
                raise VerifyError(server, index, request,
                                  f"no answer ({type(exc).__name__}: {exc})") from None
            difference = check_answer(status, body, request, expected, real_scores, tolerance, report)
            if difference:
                raise VerifyError(server, index, request, difference)
            report.requests += 1
            report.body_bytes += len(body)
    finally:
        conn.close()
    return report
