"""Routes of the contract on top of the HTTP core: /rank, /health, /stats, /stats/reset.

Request validation and response encoding are plain functions (`parse_rank`, `top_k_body`) so they
can be tested without a socket. Stage boundaries follow docs/contract.md:

    parse  request complete            -> validated request (JSON decoded)
    db     before pool acquire         -> features as Python values (both queries, decoded)
    pre    features                    -> input array (N, 40) float32
    infer  input array                 -> scores (N,) float32
    post   scores                      -> response body bytes (top-k + JSON)
    total  request complete            -> response bytes handed to the connection

(--batching adds `queue`, validated request -> its batch starts, and times db, pre and infer per
batch: py_servers/batching.py says how a batch's durations are attributed to its requests.)

Optional API key (`api_key`): every request except GET /health must carry `X-API-Key: <key>`,
checked (in constant time) before routing and validation, so that an unauthenticated client learns
nothing about paths, methods or bodies; missing or wrong -> 401. Without a key `handle` is the plain
router: the check costs nothing then.

Validation errors are answered inside the parser callback (no task is created for them); a valid
/rank request gets one task for its database round trips, or, after `enable_batching` (--batching,
the micro-batching variant, py_servers/batching.py), joins the batcher's queue instead: `_rank`
validates it either way, then hands it to the batcher, and the per-request task below is not used.
"""
from __future__ import annotations

import asyncio
import hmac
import sys
import time
import traceback

import numpy as np
import orjson

from py_servers.backends import runtime_threads
from py_servers.db import UNAVAILABLE, describe
from py_servers.stats import STAGES
from rankbench.config import DEFAULT_TOP_K, INPUT_FEATURES, MAX_ITEMS, MAX_TOP_K, USER_FEATURES

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_perf_ns = time.perf_counter_ns


class BadRequest(Exception):
    pass


def _is_int(value) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def parse_rank(body: bytes) -> tuple[int, list[int], int]:
    """Validate a /rank body -> (user_id, item_ids, top_k); BadRequest names what is wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {str(exc)[:100]}") from None
    if type(data) is not dict:
        raise BadRequest("body must be a JSON object with user_id, item_ids and top_k")
    try:
        user_id = data["user_id"]
    except KeyError:
        raise BadRequest("user_id is required") from None
    if not _is_int(user_id):
        raise BadRequest("user_id must be a 64-bit integer")
    try:
        item_ids = data["item_ids"]
    except KeyError:
        raise BadRequest("item_ids is required") from None
    if type(item_ids) is not list:
        raise BadRequest("item_ids must be a list of 64-bit integers")
    if not 1 <= len(item_ids) <= MAX_ITEMS:
        raise BadRequest(f"item_ids must have 1 to {MAX_ITEMS} entries, got {len(item_ids)}")
    if set(map(type, item_ids)) != {int} or min(item_ids) < INT64_MIN or max(item_ids) > INT64_MAX:
        for index, value in enumerate(item_ids):
            if not _is_int(value):
                raise BadRequest(f"item_ids[{index}] must be a 64-bit integer")
    top_k = data.get("top_k", DEFAULT_TOP_K)
    if type(top_k) is not int:
        raise BadRequest("top_k must be an integer")
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return user_id, item_ids, top_k


def features_to_input(user: list[float], rows) -> tuple[np.ndarray, list[int]]:
    """(N, 40) float32: the user's 30 features then each item's 10; and the item ids."""
    n = len(rows)
    x = np.empty((n, INPUT_FEATURES), dtype=np.float32)
    x[:, :USER_FEATURES] = user
    x[:, USER_FEATURES:] = [row[1] for row in rows]
    return x, [row[0] for row in rows]


def top_k_body(user_id: int, ids: list[int], scores: np.ndarray, top_k: int) -> bytes:
    """Items by score descending, ties by id ascending, at most top_k, as JSON bytes.

    Scores stay numpy float32 scalars: orjson writes those in the shortest form that reads back as
    the same float32 (0.1, where a Python float of the same value would need 17 digits,
    0.10000000149011612), which is what the Rust server writes, so both send the same bytes."""
    order = np.lexsort((np.asarray(ids, dtype=np.int64), -scores))[:top_k].tolist()
    items = [{"id": ids[i], "score": scores[i]} for i in order]
    return orjson.dumps({"user_id": user_id, "items": items}, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


UNAUTHORIZED_BODY = error_body("missing or invalid API key")


class App:
    def __init__(self, *, server_name: str, backend, database, shared_stats, recorder,
                 worker: int, workers: int, pool_total: int, api_key: str | None = None):
        self.server_name = server_name
        self.backend = backend
        self.infer = backend.infer
        self.database = database
        self.shared_stats = shared_stats
        self.recorder = recorder
        self.timers = recorder.timers
        self.worker = worker
        self.workers = workers
        self.pool_total = pool_total
        self.connections = set()
        self.draining = False
        self.tasks = set()
        self._loop = asyncio.get_running_loop()
        self._health_ok = orjson.dumps({"status": "ok", "server": server_name})
        if api_key is not None:
            if not api_key:
                raise ValueError("the API key must not be empty")
            self._api_key = api_key.encode("utf-8", "surrogateescape")
            self.handle = self._handle_with_key     # instead of the unguarded router
        self.batcher = None
        self.batching = None

    def enable_batching(self, batcher, settings: dict) -> None:
        """Micro-batching: valid /rank requests go to `batcher` (this worker's
        py_servers.batching.Batcher); `settings` (over all workers) are reported in /stats."""
        self.batcher = batcher
        self.batching = settings

    error_body = staticmethod(error_body)

    # -- dispatch -------------------------------------------------------------------------------
    def _route(self, conn, request) -> None:
        path = request.path
        method = request.method
        if path == b"/rank":
            if method != b"POST":
                self._rank_done(conn, request, 405, error_body("method not allowed on /rank: use POST"),
                                None, allow=b"Allow: POST\r\n")
                return
            self._rank(conn, request)
        elif path == b"/health":
            if method != b"GET":
                conn.respond(request, 405, error_body("method not allowed on /health: use GET"),
                             b"Allow: GET\r\n")
                return
            self._spawn(self._health(conn, request))
        elif path == b"/stats":
            if method != b"GET":
                conn.respond(request, 405, error_body("method not allowed on /stats: use GET"),
                             b"Allow: GET\r\n")
                return
            conn.respond(request, 200, orjson.dumps(self.stats()))
        elif path == b"/stats/reset":
            if method != b"POST":
                conn.respond(request, 405, error_body("method not allowed on /stats/reset: use POST"),
                             b"Allow: POST\r\n")
                return
            self.shared_stats.reset()
            conn.respond(request, 204, b"")
        else:
            shown = path[:100].decode("utf-8", "replace")
            conn.respond(request, 404, error_body(f"unknown path {shown}"))

    def _handle_with_key(self, conn, request) -> None:
        sent = request.api_key
        if (sent is None or not hmac.compare_digest(sent, self._api_key)) and not (
                request.method == b"GET" and request.path == b"/health"):
            if request.path == b"/rank":
                self.recorder.record_request(True)
            conn.respond(request, 401, UNAUTHORIZED_BODY)
            return
        self._route(conn, request)

    handle = _route      # without an API key; __init__ puts _handle_with_key in front otherwise

    def count_rejected(self, path: bytes) -> None:
        """An unreadable request (400/413/431 from the HTTP layer) that was aimed at /rank."""
        if path == b"/rank":
            self.recorder.record_request(True)

    def _spawn(self, coroutine) -> None:
        task = self._loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- /rank ----------------------------------------------------------------------------------
    def _rank(self, conn, request) -> None:
        t0 = request.received_ns
        try:
            user_id, item_ids, top_k = parse_rank(request.body_bytes())
        except BadRequest as exc:
            self._rank_done(conn, request, 400, error_body(str(exc)), None)
            return
        t_parsed = _perf_ns() if self.timers else 0
        # One test, no call: the per-request path keeps exactly the calls it had before batching.
        if self.batcher is None:
            self._spawn(self._rank_task(conn, request, user_id, item_ids, top_k, t0, t_parsed))
        else:
            self.batcher.submit(conn, request, user_id, item_ids, top_k, t0, t_parsed)

    async def _rank_task(self, conn, request, user_id, item_ids, top_k, t0, t_parsed) -> None:
        timers = self.timers
        try:
            t_db = _perf_ns() if timers else 0
            try:
                user, rows = await self.database.fetch(user_id, item_ids)
            except UNAVAILABLE as exc:
                self._rank_done(conn, request, 503, error_body(f"database unavailable: {describe(exc)}"),
                                None)
                return
            if user is None:
                self._rank_done(conn, request, 404, error_body(f"user {user_id} not found"), None)
                return
            t_fetched = _perf_ns() if timers else 0
            if rows:
                x, ids = features_to_input(user, rows)
                t_pre = _perf_ns() if timers else 0
                scores = self.infer(x)
                t_infer = _perf_ns() if timers else 0
                body = top_k_body(user_id, ids, scores, top_k)
            else:
                t_pre = t_infer = None
                body = orjson.dumps({"user_id": user_id, "items": []})
            if timers:
                t_post = _perf_ns()
                stages = (t_parsed - t0, t_fetched - t_db,
                          None if t_pre is None else t_pre - t_fetched,
                          None if t_infer is None else t_infer - t_pre,
                          t_post - (t_fetched if t_infer is None else t_infer),
                          t_post - t0)
            else:
                stages = None
            # Count before answering: once the response is out, a client may ask another worker
            # for /stats before this process runs its next line.
            self.recorder.record_request(False, stages)
            conn.respond(request, 200, body)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never expected: every 500 is a bug, so it is the one thing this server logs.
            traceback.print_exc(file=sys.stderr)
            self._rank_done(conn, request, 500, error_body("internal error"), None)

    def _rank_done(self, conn, request, status, body, stages, allow: bytes = b"") -> None:
        self.recorder.record_request(status >= 300, stages)
        conn.respond(request, status, body, allow)

    # -- /health, /stats ------------------------------------------------------------------------
    async def _health(self, conn, request) -> None:
        try:
            problem = await self.database.check()
        except asyncio.CancelledError:
            raise
        except Exception:
            traceback.print_exc(file=sys.stderr)
            conn.respond(request, 500, error_body("internal error"))
            return
        if problem is not None:
            error = f"database unavailable: {problem}"
        else:
            ready = self.shared_stats.ready_workers()
            error = None if ready >= self.workers else f"{ready} of {self.workers} workers ready"
        if error is None:
            conn.respond(request, 200, self._health_ok)
        else:
            conn.respond(request, 503, orjson.dumps(
                {"status": "unavailable", "server": self.server_name, "error": error}))

    def stats(self) -> dict:
        merged = self.shared_stats.snapshot()
        # This worker's own figures are read again now; the others' are as they last published.
        self.shared_stats.set_runtime_threads(self.worker, runtime_threads(self.backend))
        return {
            "server": self.server_name,
            "backend": self.backend.name,
            "workers": self.workers,
            "requests": merged["requests"],
            "errors": merged["errors"],
            "stages": merged["stages"],
            "timers": self.timers,
            "pool": {"total": self.pool_total,
                     "per_worker": [w["pool_size"] for w in merged["per_worker"]]},
            "per_worker": [{"pid": w["pid"], "ready": w["ready"], "requests": w["requests"],
                            "errors": w["errors"]} for w in merged["per_worker"]],
            "runtime_threads": self.shared_stats.runtime_threads(),
            **({} if self.batcher is None else {"batching": {**self.batching, **merged["batches"]}}),
        }


assert STAGES == ("parse", "db", "pre", "infer", "post", "total")
