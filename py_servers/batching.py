"""Micro-batching (`--batching`): valid /rank requests that arrive together share one database round
trip and one inference call, and each still gets exactly the answer it would get alone.

The coalescer (`Batcher`), per worker:
- a validated request joins the worker's queue (bad input is answered in the parser callback and
  never enters a batch);
- a slot is one batch in flight, and holds at most one pooled connection: there are
  --batches-in-flight slots per worker, never more than its pool share. When a slot is free, up to
  --max-batch queued requests go out together: whatever is queued by the time the batch's task first
  runs (the next turn of the event loop), or, with --max-wait-us W > 0, once --max-batch are queued
  or the oldest has waited W microseconds. A slot that finishes a batch takes the next one from the
  queue at once;
- a batch sends the contract's two queries widened to the batch, both prepared and binary, on ONE
  pooled connection (`Database.fetch_batch`): all its users (`SELECT id, features FROM users WHERE
  id = ANY($1)`), then the items of the requests whose user exists (`items ... = ANY($1)`; not sent
  when no user exists). Then ONE inference call over the rows of every request (`plan_batch`: a
  request's duplicate items are one row; the same item asked for by two requests is two rows), and
  each request is answered from its own rows (`answer`): its found items, its top_k, the same order
  and tie rule as the per-request path (`app.top_k_body`), 404 for an unknown user while the rest of
  the batch is answered, 503 for every request of a batch whose database work failed; an error
  while building one request's answer is a 500 (logged) for that request only.

Stages (docs/contract.md): a request records the durations it lived through, on its own timeline:
`parse` (as per request), `queue` (validated -> its batch starts, before the pool acquire), `db`
(the batch's pool acquire and both queries), `pre` and `infer` (the batch's tensor building and
inference: every request of the batch records the batch's durations), `post` (end of inference ->
this request's body built, so it includes the answers built before it in the batch) and `total`.
They add up to at most `total`, and stage means are per request as a request saw them. A request
without any found item records no `pre` and `infer` (its `post` then starts when the rows came
back), as per request. Once per batch, its size, rows and own durations (`db`, `pre`, `infer`,
`post` = end of inference -> last body built, `total` = batch start -> last body built) go to the
batch block of /stats (`stats.StatsRecorder.record_batch`; a batch whose database work failed
counts its size only).
"""
from __future__ import annotations

import asyncio
import sys
import time
import traceback
from collections import deque

import numpy as np
import orjson

from py_servers.app import error_body, top_k_body
from py_servers.db import UNAVAILABLE, describe
from rankbench.config import INPUT_FEATURES, USER_FEATURES

_perf_ns = time.perf_counter_ns


# -- the pure part: a batch's rows -> each request's answer ---------------------------------------
class Part:
    """One request's share of a batch: rows start..stop of the input, for these item ids."""

    __slots__ = ("start", "stop", "ids")

    def __init__(self, start: int, stop: int, ids: list[int]):
        self.start, self.stop, self.ids = start, stop, ids

    def __repr__(self) -> str:
        return f"Part({self.start}, {self.stop}, {self.ids})"


def items_of_known_users(requests, users) -> list[int]:
    """The distinct item ids of the requests whose user was found (the widened items query)."""
    wanted = {}
    for user_id, item_ids in requests:
        if user_id in users:
            wanted.update(dict.fromkeys(item_ids))
    return list(wanted)


def plan_batch(requests, users: dict, item_rows) -> tuple[np.ndarray | None, list[Part | None]]:
    """The batch's input (M, 40) float32 (None when there is nothing to score) and each request's
    Part (None: its user does not exist).

    requests: [(user_id, item_ids), ...]; users: {user id: 30 features} of the users found;
    item_rows: [(item id, 10 features), ...] of the items found, each once."""
    position = {row[0]: k for k, row in enumerate(item_rows)}
    user_position = {}
    user_index, item_index, parts = [], [], []
    for user_id, item_ids in requests:
        if user_id not in users:
            parts.append(None)
            continue
        ids = [i for i in dict.fromkeys(item_ids) if i in position]
        start = len(item_index)
        item_index.extend([position[i] for i in ids])
        parts.append(Part(start, len(item_index), ids))
        if ids:
            at = user_position.setdefault(user_id, len(user_position))
            user_index.extend([at] * len(ids))
    if not item_index:
        return None, parts
    x = np.empty((len(item_index), INPUT_FEATURES), dtype=np.float32)
    user_matrix = np.array(list(map(users.__getitem__, user_position)), dtype=np.float32)
    item_matrix = np.array([row[1] for row in item_rows], dtype=np.float32)
    x[:, :USER_FEATURES] = user_matrix[user_index]
    x[:, USER_FEATURES:] = item_matrix[item_index]
    return x, parts


def answer(user_id: int, top_k: int, part: Part | None, scores) -> tuple[int, bytes]:
    """(status, body) of one request of a batch, from its Part and the batch's scores."""
    if part is None:
        return 404, error_body(f"user {user_id} not found")
    if part.start == part.stop:
        return 200, orjson.dumps({"user_id": user_id, "items": []})
    return 200, top_k_body(user_id, part.ids, scores[part.start:part.stop], top_k)


def answer_batch(requests, users: dict, item_rows, infer) -> list[tuple[int, bytes]]:
    """Every request's (status, body): plan, one inference call, split. `requests` holds
    (user_id, item_ids, top_k); the coalescer runs the same three steps with timers between."""
    x, parts = plan_batch([(u, i) for u, i, _ in requests], users, item_rows)
    scores = None if x is None else infer(x)
    return [answer(u, k, part, scores) for (u, _, k), part in zip(requests, parts)]


# -- the coalescer ---------------------------------------------------------------------------------
class Pending:
    """A validated request waiting for (or inside) a batch."""

    __slots__ = ("conn", "request", "user_id", "item_ids", "top_k", "t0", "t_parsed", "arrived")

    def __init__(self, conn, request, user_id, item_ids, top_k, t0, t_parsed, arrived=0.0):
        self.conn, self.request = conn, request
        self.user_id, self.item_ids, self.top_k = user_id, item_ids, top_k
        self.t0, self.t_parsed, self.arrived = t0, t_parsed, arrived


def _wake(waiter) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Batcher:
    """One worker's queue and batch slots (see the module docstring)."""

    def __init__(self, *, database, infer, recorder, spawn, max_batch: int, max_wait_us: int,
                 slots: int):
        if max_batch < 1 or slots < 1 or max_wait_us < 0:
            raise ValueError("max_batch and slots must be >= 1, max_wait_us >= 0")
        self.database = database
        self.infer = infer
        self.recorder = recorder
        self.timers = recorder.timers
        self._spawn = spawn
        self.max_batch = max_batch
        self.max_wait_us = max_wait_us
        self._max_wait_s = max_wait_us / 1e6
        self.slots = slots
        self.free = slots
        self.queue: deque[Pending] = deque()
        self._waking = False        # a slot task was started and has not taken its batch yet
        self._waiters: deque = deque()   # slot tasks waiting for a full batch or the max wait
        self._loop = asyncio.get_running_loop()

    def submit(self, conn, request, user_id, item_ids, top_k, t0, t_parsed) -> None:
        """Queue a validated request; wake a slot if one is free and none is waking already."""
        pending = Pending(conn, request, user_id, item_ids, top_k, t0, t_parsed)
        queue = self.queue
        if self._max_wait_s:
            pending.arrived = self._loop.time()
            queue.append(pending)
            if len(queue) >= self.max_batch and self._waiters:
                _wake(self._waiters.popleft())
        else:
            queue.append(pending)
        if self.free and not self._waking:
            self._wake_slot()

    def _wake_slot(self) -> None:
        self.free -= 1
        self._waking = True
        self._spawn(self._slot())

    async def _slot(self) -> None:
        """One slot: serve batches while requests are queued, then give the slot back."""
        took = False
        try:
            batch = await self._take()
            self._waking = False
            took = True
            while batch:
                if self.queue and self.free and not self._waking:
                    self._wake_slot()       # more than one batch is queued: use another slot
                await self._serve(batch)
                batch = await self._take() if self.queue else None
        finally:
            if not took:            # cancelled while waiting: let the next request wake a slot
                self._waking = False
            self.free += 1

    async def _take(self) -> list[Pending]:
        queue = self.queue
        while self._max_wait_s and queue and len(queue) < self.max_batch:
            due = queue[0].arrived + self._max_wait_s
            if due <= self._loop.time():
                break
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            timer = self._loop.call_at(due, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]

    async def _serve(self, batch: list[Pending]) -> None:
        timers = self.timers
        recorder = self.recorder
        answered = 0
        try:
            t_start = _perf_ns() if timers else 0
            requests = [(p.user_id, p.item_ids) for p in batch]
            try:
                users, item_rows = await self.database.fetch_batch(
                    list(dict.fromkeys(p.user_id for p in batch)),
                    lambda found: items_of_known_users(requests, found))
            except UNAVAILABLE as exc:
                body = error_body(f"database unavailable: {describe(exc)}")
                recorder.record_batch(len(batch), 0)
                for pending in batch:
                    recorder.record_request(True)
                    pending.conn.respond(pending.request, 503, body)
                    answered += 1
                return
            t_fetched = _perf_ns() if timers else 0
            x, parts = plan_batch(requests, users, item_rows)
            if x is not None:
                t_pre = _perf_ns() if timers else 0
                scores = self.infer(x)
                t_infer = _perf_ns() if timers else 0
            else:
                t_pre = t_infer = scores = None
            t_post = t_fetched
            for pending, part in zip(batch, parts):
                try:
                    status, body = answer(pending.user_id, pending.top_k, part, scores)
                except Exception:
                    traceback.print_exc(file=sys.stderr)
                    status, body = 500, error_body("internal error")
                if timers:
                    t_post = _perf_ns()
                if status != 200:
                    recorder.record_request(True)
                elif timers:
                    scored = part.start != part.stop
                    recorder.record_request(False, (
                        pending.t_parsed - pending.t0, t_start - pending.t_parsed,
                        t_fetched - t_start,
                        t_pre - t_fetched if scored else None,
                        t_infer - t_pre if scored else None,
                        t_post - (t_infer if scored else t_fetched),
                        t_post - pending.t0))
                else:
                    recorder.record_request(False)
                # Counted before answering, as per request (a client may read /stats next).
                pending.conn.respond(pending.request, status, body)
                answered += 1
            rows = 0 if x is None else len(x)
            if timers:
                recorder.record_batch(len(batch), rows, (
                    t_fetched - t_start,
                    None if x is None else t_pre - t_fetched,
                    None if x is None else t_infer - t_pre,
                    t_post - (t_fetched if x is None else t_infer),
                    t_post - t_start))
            else:
                recorder.record_batch(len(batch), rows)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never expected: every 500 is a bug, so it is the one thing this server logs.
            traceback.print_exc(file=sys.stderr)
            body = error_body("internal error")
            for pending in batch[answered:]:
                recorder.record_request(True)
                pending.conn.respond(pending.request, 500, body)

    def describe(self) -> dict:
        return {"max_batch": self.max_batch, "max_wait_us": self.max_wait_us,
                "batches_in_flight": self.slots}
