"""Unit tests of the micro-batching variant (py_servers/batching.py) without a socket or a database:
the split of a batch's rows into each request's answer (hand-made rows), the coalescer against a
stand-in database (what goes out together, slots, the max wait, errors kept to their request), its
/stats block, and the flags. The server under concurrency is tested in tests/batching/."""
from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest

from py_servers import batching
from py_servers.app import features_to_input, top_k_body
from py_servers.batching import Batcher, Part, answer, answer_batch, items_of_known_users, plan_batch
from py_servers.main import parse_args
from py_servers.stats import BATCH_STAGES, PER_BATCH_STAGES, STAGES, SharedStats

W = np.arange(40, dtype=np.float32) / 40 - 0.5


def rowwise(x: np.ndarray) -> np.ndarray:
    """A stand-in model whose score of a row depends on that row only, bit for bit."""
    return (x * W).sum(axis=1, dtype=np.float32)


def user(k: float) -> list[float]:
    return [k] * 30


def item(k: float) -> list[float]:
    return [k] * 10


# -- the split: a batch's rows -> each request's answer --------------------------------------------
def test_plan_lays_out_each_requests_found_items_once_behind_its_user():
    users = {1: user(1.0), 3: user(3.0)}
    item_rows = [(11, item(0.11)), (10, item(0.10)), (12, item(0.12))]
    requests = [(1, [10, 11, 10, 99]), (2, [10]), (3, [12, 11]), (1, [99, -4])]
    x, parts = plan_batch(requests, users, item_rows)
    assert [(p.start, p.stop, p.ids) if p else None for p in parts] == \
        [(0, 2, [10, 11]), None, (2, 4, [12, 11]), (4, 4, [])]
    assert x.shape == (4, 40) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = np.array([user(1.0) + item(0.10), user(1.0) + item(0.11),
                         user(3.0) + item(0.12), user(3.0) + item(0.11)], dtype=np.float32)
    assert np.array_equal(x, expected)


def test_plan_with_nothing_to_score():
    x, parts = plan_batch([(5, [1]), (6, [2])], {6: user(0.0)}, [])
    assert x is None
    assert parts[0] is None and (parts[1].start, parts[1].stop, parts[1].ids) == (0, 0, [])


def test_each_request_gets_its_own_answer():
    users = {1: user(1.0), 3: user(-1.0)}
    item_rows = [(10, item(0.5)), (11, item(-0.5)), (12, item(0.0)), (13, item(0.0))]
    scores = np.array([0.9, 0.1, 0.5, 0.5, 0.7], dtype=np.float32)    # rows 0..4, by hand
    requests = [(1, [10, 11], 1), (2, [10], 5), (3, [12, 13, 10], 2), (1, [404], 3)]
    x, parts = plan_batch([(u, i) for u, i, _ in requests], users, item_rows)
    assert len(x) == 5
    answers = [answer(u, k, part, scores) for (u, _, k), part in zip(requests, parts)]
    assert [status for status, _ in answers] == [200, 404, 200, 200]
    bodies = [json.loads(body) for _, body in answers]
    assert bodies[0] == {"user_id": 1, "items": [{"id": 10, "score": pytest.approx(0.9)}]}
    assert bodies[1] == {"error": "user 2 not found"}
    # Request 3's rows are 2..4 (items 12, 13, 10): 12 and 13 tie, the smaller id first.
    assert [i["id"] for i in bodies[2]["items"]] == [10, 12]
    assert bodies[3] == {"user_id": 1, "items": []}


def test_a_batch_answers_byte_for_byte_as_each_request_alone():
    """Random overlapping requests (shared users and items, duplicates, unknown users and items):
    every body equals the per-request path's (features_to_input, top_k_body) on the same rows."""
    rng = random.Random(15)
    users = {u: [rng.uniform(-1, 1) for _ in range(30)] for u in range(1, 9)}
    items = {i: [rng.uniform(-1, 1) for _ in range(10)] for i in range(100, 160)}
    items[161] = list(items[100])                                     # a twin: ties exactly
    requests = []
    for _ in range(64):
        ids = [rng.randint(95, 165) for _ in range(rng.randint(1, 30))] + [rng.choice([100, 161])]
        requests.append((rng.randint(1, 10), ids, rng.choice([1, 3, 10, 1000])))
    item_rows = [(i, items[i]) for i in items_of_known_users([r[:2] for r in requests], users)
                 if i in items]
    for got, (user_id, item_ids, top_k) in zip(answer_batch(requests, users, item_rows, rowwise),
                                               requests):
        if user_id not in users:
            assert got == (404, b'{"error":"user %d not found"}' % user_id)
            continue
        rows = [(i, items[i]) for i in dict.fromkeys(item_ids) if i in items]
        x, ids = features_to_input(users[user_id], rows)
        assert got == (200, top_k_body(user_id, ids, rowwise(x), top_k))


def test_items_query_asks_for_the_items_of_known_users_once():
    requests = [(1, [5, 6, 5]), (2, [7]), (1, [6, 8]), (3, [9])]
    assert items_of_known_users(requests, {1: user(0), 3: user(0)}) == [5, 6, 8, 9]


# -- the coalescer against a stand-in database -----------------------------------------------------
class _Database:
    """fetch_batch as py_servers.db does it, from dicts; records every batch and the concurrency."""

    def __init__(self, users, items, delay_s=0.01, error=None):
        self.users, self.items, self.delay_s, self.error = users, items, delay_s, error
        self.batches: list[list[int]] = []
        self.in_flight = self.most_in_flight = 0

    async def fetch_batch(self, user_ids, items_for):
        self.batches.append(list(user_ids))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        error = self.error              # as the database is when the batch goes out
        try:
            await asyncio.sleep(self.delay_s)
            if error is not None:
                raise error
            found = {u: self.users[u] for u in user_ids if u in self.users}
            wanted = items_for(found) if found else []
            return found, [(i, self.items[i]) for i in wanted if i in self.items]
        finally:
            self.in_flight -= 1


class _Conn:
    def __init__(self):
        self.answers = {}

    def respond(self, request, status, body, extra=b""):
        assert request not in self.answers, f"request {request} answered twice"
        self.answers[request] = (status, json.loads(body))


USERS = {u: user(u / 10) for u in range(1, 6)}
ITEMS = {i: item(i / 100) for i in range(1, 50)}


def _batcher(database, *, slots=1, max_batch=64, max_wait_us=0, shared=None, infer=rowwise):
    shared = shared or SharedStats(1, max_batch=max_batch)
    tasks = set()

    def spawn(coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    batcher = Batcher(database=database, infer=infer, recorder=shared.recorder(0), spawn=spawn,
                      max_batch=max_batch, max_wait_us=max_wait_us, slots=slots)
    return batcher, shared, tasks


def _submit(batcher, conn, tag, user_id, item_ids, top_k=10):
    now = batching._perf_ns()
    batcher.submit(conn, tag, user_id, item_ids, top_k, now - 1000, now)


async def _settle(tasks):
    while tasks:
        await asyncio.gather(*list(tasks))


def test_requests_queued_together_go_out_together_and_wait_for_a_free_slot():
    async def scenario():
        database = _Database(USERS, ITEMS)
        batcher, shared, tasks = _batcher(database, slots=1)
        conn = _Conn()
        for n in range(3):                          # one turn of the loop: one batch
            _submit(batcher, conn, f"a{n}", 1 + n, [1, 2, 3])
        await asyncio.sleep(0)                      # the slot's task takes its batch
        for n in range(5):                          # arrive while it is served: the next batch
            _submit(batcher, conn, f"b{n}", 1 + n % 2, [4, 5])
        await _settle(tasks)
        return database, batcher, shared.snapshot(), conn

    database, batcher, stats, conn = asyncio.run(scenario())
    assert database.batches == [[1, 2, 3], [1, 2]]          # users asked once per batch
    assert database.most_in_flight == 1 and batcher.free == 1 and not batcher.queue
    assert stats["batches"]["batch_sizes"] == [[3, 1], [5, 1]]
    assert stats["batches"]["mean_batch_size"] == 4.0 and stats["batches"]["rows"] == 3 * 3 + 5 * 2
    assert len(conn.answers) == 8 and all(status == 200 for status, _ in conn.answers.values())
    assert conn.answers["b3"][1]["user_id"] == 2


def test_max_batch_and_slots_bound_every_batch():
    async def scenario():
        database = _Database(USERS, ITEMS)
        batcher, shared, tasks = _batcher(database, slots=2, max_batch=4)
        conn = _Conn()
        for n in range(11):
            _submit(batcher, conn, n, 1, [n + 1])
        await _settle(tasks)
        return database, batcher, shared.snapshot(), conn

    database, batcher, stats, conn = asyncio.run(scenario())
    assert stats["batches"]["batch_sizes"] == [[3, 1], [4, 2]]
    assert database.most_in_flight == 2 and batcher.free == 2
    assert sorted(conn.answers) == list(range(11))
    assert all(body["items"][0]["id"] == n + 1 for n, (_, body) in conn.answers.items())


def test_unknown_user_is_404_while_the_rest_of_its_batch_is_answered():
    async def scenario():
        database = _Database(USERS, ITEMS)
        batcher, shared, tasks = _batcher(database)
        conn = _Conn()
        _submit(batcher, conn, "known", 2, [7, 8, 7], 1)
        _submit(batcher, conn, "unknown", 99, [7])
        _submit(batcher, conn, "nothing found", 3, [1000])
        await _settle(tasks)
        return shared.snapshot(), conn.answers

    stats, answers = asyncio.run(scenario())
    assert answers["unknown"] == (404, {"error": "user 99 not found"})
    assert answers["nothing found"] == (200, {"user_id": 3, "items": []})
    status, body = answers["known"]
    assert status == 200 and [i["id"] for i in body["items"]] == [8]   # 8 scores above 7 here
    assert stats["requests"] == 3 and stats["errors"] == 1
    assert stats["batches"]["batch_sizes"] == [[3, 1]] and stats["batches"]["rows"] == 2


def test_a_failed_database_round_trip_is_503_for_its_batch_and_the_next_batch_is_served():
    async def scenario():
        database = _Database(USERS, ITEMS, error=ConnectionRefusedError("connection refused"))
        batcher, shared, tasks = _batcher(database)
        conn = _Conn()
        _submit(batcher, conn, "a", 1, [1])
        _submit(batcher, conn, "b", 2, [1])
        await asyncio.sleep(0)
        database.error = None
        _submit(batcher, conn, "c", 1, [1])
        await _settle(tasks)
        return shared.snapshot(), conn.answers

    stats, answers = asyncio.run(scenario())
    assert answers["a"] == answers["b"] == (503, {"error": "database unavailable: connection refused"})
    assert answers["c"][0] == 200
    assert stats["errors"] == 2 and stats["batches"]["batch_sizes"] == [[1, 1], [2, 1]]


def test_an_error_answering_one_request_is_a_500_for_that_request_only(monkeypatch, capsys):
    real = batching.top_k_body

    def broken_for_user_4(user_id, *args):
        if user_id == 4:
            raise RuntimeError("bug")
        return real(user_id, *args)

    monkeypatch.setattr(batching, "top_k_body", broken_for_user_4)

    async def scenario():
        database = _Database(USERS, ITEMS)
        batcher, shared, tasks = _batcher(database)
        conn = _Conn()
        for tag, user_id in (("before", 1), ("broken", 4), ("after", 5)):
            _submit(batcher, conn, tag, user_id, [1, 2])
        await _settle(tasks)
        return shared.snapshot(), conn.answers

    stats, answers = asyncio.run(scenario())
    assert answers["broken"] == (500, {"error": "internal error"})
    assert answers["before"][0] == answers["after"][0] == 200
    assert stats["errors"] == 1 and "RuntimeError: bug" in capsys.readouterr().err


def test_a_failed_inference_is_a_500_for_its_batch_and_the_slot_is_given_back(capsys):
    calls = []

    def infer(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("runtime failed")
        return rowwise(x)

    async def scenario():
        batcher, shared, tasks = _batcher(_Database(USERS, ITEMS), infer=infer)
        conn = _Conn()
        _submit(batcher, conn, "a", 1, [1])
        _submit(batcher, conn, "b", 2, [1])
        await _settle(tasks)
        _submit(batcher, conn, "c", 1, [1])
        await _settle(tasks)
        return batcher, conn.answers

    batcher, answers = asyncio.run(scenario())
    assert answers["a"] == answers["b"] == (500, {"error": "internal error"})
    assert answers["c"][0] == 200 and batcher.free == 1
    assert "runtime failed" in capsys.readouterr().err


def test_max_wait_holds_a_lone_request_and_a_full_batch_goes_at_once():
    async def scenario():
        loop = asyncio.get_running_loop()
        database = _Database(USERS, ITEMS, delay_s=0)
        batcher, shared, tasks = _batcher(database, max_batch=3, max_wait_us=200_000)
        conn = _Conn()
        start = loop.time()
        _submit(batcher, conn, "alone", 1, [1])
        await _settle(tasks)
        lone_s = loop.time() - start
        start = loop.time()
        _submit(batcher, conn, "x", 1, [1])
        await asyncio.sleep(0.01)
        _submit(batcher, conn, "y", 2, [1])
        _submit(batcher, conn, "z", 3, [1])        # the third: a full batch, no more waiting
        await _settle(tasks)
        return lone_s, loop.time() - start, shared.snapshot(), conn.answers

    lone_s, full_s, stats, answers = asyncio.run(scenario())
    assert 0.19 <= lone_s < 1.0, lone_s
    assert full_s < 0.15, full_s
    assert stats["batches"]["batch_sizes"] == [[1, 1], [3, 1]] and len(answers) == 4


def test_a_request_records_the_batch_stages_it_lived_through():
    async def scenario():
        batcher, shared, tasks = _batcher(_Database(USERS, ITEMS, delay_s=0.02))
        conn = _Conn()
        _submit(batcher, conn, "a", 1, [1, 2])
        _submit(batcher, conn, "b", 2, [3])
        _submit(batcher, conn, "empty", 3, [999])
        await _settle(tasks)
        return shared.snapshot()

    stats = asyncio.run(scenario())
    stages = stats["stages"]
    assert tuple(stages) == BATCH_STAGES
    assert stages["total"]["count"] == stages["queue"]["count"] == stages["db"]["count"] == 3
    assert stages["pre"]["count"] == stages["infer"]["count"] == 2    # none for "empty"
    assert stages["db"]["mean_us"] >= 20_000
    inner = sum(stages[name]["sum_us"] for name in BATCH_STAGES[:-1])
    assert inner <= stages["total"]["sum_us"] * 1.001
    per_batch = stats["batches"]["batch_stages"]
    assert tuple(per_batch) == PER_BATCH_STAGES
    assert all(per_batch[name]["count"] == 1 for name in PER_BATCH_STAGES)
    # Every request saw the batch's own db, pre and infer durations.
    for name in ("db", "pre", "infer"):
        assert stages[name]["max_us"] == pytest.approx(per_batch[name]["max_us"])


def test_bad_input_is_answered_400_and_never_joins_a_batch():
    from py_servers.app import App
    from py_servers.backends.none_backend import NoneBackend

    class Request:
        def __init__(self, body):
            self.body, self.received_ns = body, batching._perf_ns()
            self.path, self.method = b"/rank", b"POST"

        def body_bytes(self):
            return self.body

    async def scenario():
        shared = SharedStats(1, max_batch=64)
        app = App(server_name="exp-batch", backend=NoneBackend(), database=None,
                  shared_stats=shared, recorder=shared.recorder(0), worker=0, workers=1,
                  pool_total=1)
        database = _Database(USERS, ITEMS)
        batcher = Batcher(database=database, infer=app.infer, recorder=app.recorder,
                          spawn=app._spawn, max_batch=64, max_wait_us=0, slots=1)
        app.enable_batching(batcher, {"max_batch": 64, "max_wait_us": 0, "batches_in_flight": 1})
        conn = _Conn()
        requests = [Request(b'{"user_id": 1, "item_ids": [1, 2]}'), Request(b"{broken"),
                    Request(b'{"user_id": 2, "item_ids": []}'), Request(b'{"user_id": 2, "item_ids": [3]}')]
        for request in requests:
            app.handle(conn, request)
        await _settle(app.tasks)
        return app.stats(), [conn.answers[r] for r in requests]

    stats, answers = asyncio.run(scenario())
    assert [status for status, _ in answers] == [200, 400, 400, 200]
    assert answers[1][1]["error"].startswith("malformed JSON")
    assert stats["batching"]["batch_sizes"] == [[2, 1]] and stats["batching"]["requests"] == 2
    assert stats["batching"]["max_batch"] == 64 and stats["requests"] == 4 and stats["errors"] == 2


# -- /stats ----------------------------------------------------------------------------------------
def test_batch_block_merges_over_workers_and_resets():
    shared = SharedStats(2, max_batch=8)
    first, second = shared.recorder(0), shared.recorder(1)
    first.record_batch(3, 30, (1000, 2000, 3000, 4000, 10_000))
    second.record_batch(3, 20, (1000, None, None, 500, 1500))
    second.record_batch(8, 80)
    with pytest.raises(ValueError):
        second.record_batch(9, 1)
    batches = shared.snapshot()["batches"]
    assert batches["batches"] == 3 and batches["requests"] == 14 and batches["rows"] == 130
    assert batches["batch_sizes"] == [[3, 2], [8, 1]]
    assert batches["mean_batch_size"] == pytest.approx(14 / 3, abs=1e-3)
    assert batches["batch_stages"]["db"]["count"] == 2 and batches["batch_stages"]["pre"]["count"] == 1
    assert batches["batch_stages"]["total"]["max_us"] == pytest.approx(10.0)
    shared.reset()
    assert shared.snapshot()["batches"]["batches"] == 0
    first.record_batch(1, 1)
    assert shared.snapshot()["batches"]["batch_sizes"] == [[1, 1]]


def test_a_per_request_server_keeps_its_stages_and_has_no_batch_block():
    snapshot = SharedStats(1).snapshot()
    assert tuple(snapshot["stages"]) == STAGES and "batches" not in snapshot


# -- flags -----------------------------------------------------------------------------------------
def test_batching_flags_and_their_defaults():
    settings = parse_args(["--server-name", "py-onnx-batch", "--backend", "onnx", "--batching",
                           "--workers", "3", "--pool-size", "8"])
    assert (settings.max_batch, settings.max_wait_us) == (64, 0)
    assert [settings.batch_slots(w) for w in range(3)] == [settings.pool_share(w) for w in range(3)]
    settings = parse_args(["--server-name", "x", "--port", "1", "--backend", "none", "--batching",
                           "--max-batch", "8", "--max-wait-us", "500", "--batches-in-flight", "3",
                           "--workers", "2", "--pool-size", "8"])
    assert (settings.max_batch, settings.max_wait_us) == (8, 500)
    assert [settings.batch_slots(w) for w in range(2)] == [2, 1]


@pytest.mark.parametrize("argv,message", [
    (["--server-name", "py-onnx-batch", "--backend", "onnx"], "needs --batching"),
    (["--server-name", "py-onnx", "--backend", "onnx", "--batching"], "micro-batching variant"),
    (["--server-name", "x", "--port", "1", "--backend", "none", "--max-batch", "4"],
     "only apply with --batching"),
    (["--server-name", "x", "--port", "1", "--backend", "none", "--batching", "--max-batch", "0"],
     "--max-batch must be"),
    (["--server-name", "x", "--port", "1", "--backend", "none", "--batching",
      "--max-wait-us", "-1"], "--max-wait-us must be"),
    (["--server-name", "x", "--port", "1", "--backend", "none", "--batching", "--pool-size", "4",
      "--batches-in-flight", "5"], "--batches-in-flight must be 1..--pool-size (4)"),
])
def test_batching_flags_refused_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_part_repr_names_its_rows():
    assert repr(Part(2, 4, [7, 9])) == "Part(2, 4, [7, 9])"
