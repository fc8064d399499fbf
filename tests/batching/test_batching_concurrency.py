"""The micro-batching variants under concurrency: many requests at once, with overlapping users and
items, unknown users and items and bad input mixed in, every answer checked against the plain-numpy
reference (bench.verify's reference answers and checks), and /stats showing that batches of more
than one request actually formed (otherwise this would prove nothing about batching).

Servers: the registered micro-batching variants among the selection (RANKBENCH_SERVERS, default every
runnable server; tests/servers.py), each with --workers 1 and 2. Load: CONNECTIONS connections released
together by a barrier, each sending its PIPELINED requests in one write, so that a worker parses many
requests in one turn of its event loop: they land in its queue together.
"""
from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import servers as launcher  # noqa: E402  (tests/servers.py; puts tests/conformance on sys.path)
from conformance_http import build_request  # noqa: E402

from bench.verify import ServerReport, check_answer, reference_answers  # noqa: E402
from rankbench.config import ITEMS_PER_SCALE, USERS_PER_SCALE  # noqa: E402
from rankbench.servers import SERVERS  # noqa: E402

MICRO_BATCHING = "micro-batching"
CONNECTIONS = 32
PIPELINED = 16
TOLERANCE = 1e-5

_NAMES, _EXPLICIT = launcher.selection()
BATCH_SERVERS = [n for n in _NAMES if n in SERVERS and SERVERS[n].variant == MICRO_BATCHING]

# Bad input of every kind the validation names; each must get its own 400 and leave the rest alone.
BAD_BODIES = [b"{broken", b"[]", b'{"item_ids": [1]}', b'{"user_id": 1, "item_ids": []}',
              b'{"user_id": 1, "item_ids": [1, true]}', b'{"user_id": "7", "item_ids": [1]}',
              b'{"user_id": 1, "item_ids": [1], "top_k": 0}',
              json.dumps({"user_id": 1, "item_ids": list(range(1001))}).encode()]


def make_load(seed: int) -> list[list[dict | bytes]]:
    """CONNECTIONS lists of PIPELINED requests: a dict is a valid request, bytes a bad body."""
    from seed.data import TWIN_ITEMS

    rng = random.Random(seed)
    users = rng.sample(range(1, USERS_PER_SCALE + 1), 24)                # shared across requests
    unknown_users = [USERS_PER_SCALE + 17, 10**15]
    items = rng.sample(range(1, ITEMS_PER_SCALE + 1), 400)
    twins = [i for pair in TWIN_ITEMS for i in pair]
    unknown_items = [0, -5, ITEMS_PER_SCALE + 3, 2**62]
    load = []
    for _ in range(CONNECTIONS):
        requests = []
        for _ in range(PIPELINED):
            roll = rng.random()
            if roll < 0.08:
                requests.append(rng.choice(BAD_BODIES))
                continue
            user_id = rng.choice(unknown_users) if roll < 0.14 else rng.choice(users)
            ids = rng.sample(items, rng.choice((1, 3, 10, 40)))
            if rng.random() < 0.3:
                ids += rng.sample(ids, min(3, len(ids)))                 # duplicates: scored once
            if rng.random() < 0.3:
                ids += rng.sample(unknown_items, 2)                      # left out
            if rng.random() < 0.2:
                ids += rng.sample(twins, 4)
            if rng.random() < 0.05:
                ids = rng.sample(unknown_items, 3)                       # none found: []
            rng.shuffle(ids)
            requests.append({"user_id": user_id, "item_ids": ids,
                             "top_k": rng.choice((1, 5, 10, 1000))})
        load.append(requests)
    return load


def fetch_rows(dsn: str, load) -> tuple[dict, dict]:
    """Every user and item the load names, as the database holds them (lists of floats)."""
    import asyncpg

    requests = [r for conn in load for r in conn if isinstance(r, dict)]
    user_ids = sorted({r["user_id"] for r in requests if -2**63 <= r["user_id"] < 2**63})
    item_ids = sorted({i for r in requests for i in r["item_ids"]})

    async def read():
        conn = await asyncpg.connect(dsn)
        try:
            users = await conn.fetch("SELECT id, features FROM users WHERE id = ANY($1)", user_ids)
            items = await conn.fetch("SELECT id, features FROM items WHERE id = ANY($1)", item_ids)
        finally:
            await conn.close()
        return ({r["id"]: list(r["features"]) for r in users},
                {r["id"]: list(r["features"]) for r in items})

    return asyncio.run(read())


def fire(server, load) -> list[list]:
    """Send every connection's requests pipelined in one write, all connections at once; the
    responses in request order per connection."""
    barrier = threading.Barrier(len(load))

    def one(requests):
        payload = b"".join(build_request("POST", "/rank", r if isinstance(r, bytes) else
                                         json.dumps(r).encode()) for r in requests)
        with server.connect(timeout=60) as conn:
            barrier.wait(timeout=60)
            conn.send(payload)
            return [conn.read_response(timeout=60) for _ in requests]

    with ThreadPoolExecutor(len(load)) as pool:
        return list(pool.map(one, load))


def get_json(server, method: str, path: str):
    with server.connect() as conn:
        response = conn.request(method, path)
    assert response.status in (200, 204), response
    return response.json() if response.body else None


@pytest.fixture(scope="module", params=[(n, w) for n in BATCH_SERVERS for w in (1, 2)],
                ids=[f"{n}-w{w}" for n in BATCH_SERVERS for w in (1, 2)])
def batch_server(request, dsn, model_dir):
    name, workers = request.param
    spec = launcher.resolve(name, _EXPLICIT)
    running = launcher.start(spec, dsn, workers=workers, model_dir=model_dir)
    yield running
    running.stop()


def test_a_micro_batching_server_is_selected():
    if not BATCH_SERVERS:
        pytest.skip(f"no micro-batching server among RANKBENCH_SERVERS={','.join(_NAMES)}")


def test_every_answer_under_concurrency_is_the_reference_answer(batch_server, dsn, model_dir):
    from rankbench.reference import load_reference

    load = make_load(seed=15 + batch_server.workers)
    users, items = fetch_rows(dsn, load)
    model = load_reference(model_dir)
    get_json(batch_server, "POST", "/stats/reset")
    responses = fire(batch_server, load)
    stats = get_json(batch_server, "GET", "/stats")

    report = ServerReport(batch_server.name, batch_server.real_scores)
    valid = bad = unknown = 0
    for requests, answers in zip(load, responses):
        for index, (sent, got) in enumerate(zip(requests, answers)):
            where = f"{batch_server.name}: request {index} of its connection"
            if isinstance(sent, bytes):
                bad += 1
                assert got.status == 400, f"{where}: bad input {sent[:60]!r} got {got}"
                assert isinstance(got.json().get("error"), str), f"{where}: {got}"
                continue
            valid += 1
            expected = reference_answers([sent], users, items, model.scores)[0]
            unknown += expected.scores is None
            if expected.scores is None:
                assert got.json() == {"error": f"user {sent['user_id']} not found"}, where
            problem = check_answer(got.status, got.body, sent, expected, batch_server.real_scores,
                                   TOLERANCE, report)
            assert problem is None, f"{where} {json.dumps(sent)[:300]}: {problem}"
    assert bad and unknown and valid > 300, (bad, unknown, valid)

    batches = stats["batching"]
    assert stats["requests"] == valid + bad and stats["errors"] == bad + unknown, stats
    assert batches["requests"] == valid, "every valid request went through one batch, no bad one"
    assert sum(count for _, count in batches["batch_sizes"]) == batches["batches"]
    largest = max(size for size, _ in batches["batch_sizes"])
    assert largest > 1 and batches["mean_batch_size"] > 1.5, \
        f"no batching happened under this load: {batches['batch_sizes']}"
    assert largest <= batches["max_batch"] == 64
    assert batches["batches_in_flight"] == 8 and batches["max_wait_us"] == 0
    assert stats["stages"]["queue"]["count"] == valid - unknown
