"""A small server that speaks the rankbench contract, for testing the bench harness.

It is not a benchmark subject: it exists so that the orchestrator, the verify step and the wrk
script can be tested without the real servers, and so that faults (a wrong score, a crash at start,
a worker process that must be reaped) can be produced on purpose.

    python tests/bench/bench_fake_server.py --port 8100 --data synthetic [--wrong-score-from 17]

Data sources:
  synthetic  features are a deterministic function of the id (see `synthetic_score`); users above
             --user-max and items above --item-max do not exist. Needs no database.
  db         the two statements of the contract on an asyncpg pool, scored with the plain-numpy
             reference model (rankbench.reference): a real, if slow, implementation.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import sys
import time

import httptools
import numpy as np
import orjson

from rankbench.contract import ITEMS_SQL, STAGES, USER_SQL


def synthetic_score(user_id: int, item_id: int) -> float:
    """A score in (0, 1) that depends on both ids, cheap and exactly reproducible."""
    return 1.0 / (1.0 + math.exp(-math.sin(user_id * 0.7 + item_id * 1.3) * 3.0))


def synthetic_rank(user_id: int, item_ids: list[int], top_k: int, item_max: int) -> list[dict]:
    found = sorted({i for i in item_ids if 1 <= i <= item_max})
    scored = sorted(((synthetic_score(user_id, i), i) for i in found), key=lambda t: (-t[0], t[1]))
    return [{"id": i, "score": s} for s, i in scored[:top_k]]


async def _no_reset(connection) -> None:
    return None


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_rank_body(body: bytes) -> tuple[int, list[int], int]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "body must be a JSON object")
    user_id = data.get("user_id")
    if type(user_id) is not int:
        raise BadRequest(400, "user_id must be an integer")
    item_ids = data.get("item_ids")
    if not isinstance(item_ids, list) or not 1 <= len(item_ids) <= 1000 or \
            any(type(i) is not int for i in item_ids):
        raise BadRequest(400, "item_ids must be a list of 1..1000 integers")
    top_k = data.get("top_k", 10)
    if type(top_k) is not int or not 1 <= top_k <= 1000:
        raise BadRequest(400, "top_k must be an integer in 1..1000")
    return user_id, item_ids, top_k


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.samples = {name: [] for name in STAGES}
        self.requests = 0
        self.errors = 0

    def as_dict(self, name: str, workers: int) -> dict:
        stages = {}
        for stage, values in self.samples.items():
            if not values:
                continue
            arr = np.asarray(values, dtype=np.float64)
            stages[stage] = {"count": int(arr.size), "sum_us": float(arr.sum()),
                             "mean_us": float(arr.mean()), "p50_us": float(np.percentile(arr, 50)),
                             "p90_us": float(np.percentile(arr, 90)),
                             "p99_us": float(np.percentile(arr, 99)), "max_us": float(arr.max())}
        return {"server": name, "backend": "fake", "workers": workers, "requests": self.requests,
                "errors": self.errors, "stages": stages}


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.rank_count = 0
        self.pool = None
        self.model = None
        self.bodies = open(args.record_bodies, "ab", buffering=0) if args.record_bodies else None

    async def start(self) -> None:
        if self.args.data == "db":
            import asyncpg
            from rankbench.reference import load_reference
            self.model = load_reference(self.args.model_dir)
            # reset=None would run asyncpg's reset query on every release: a third statement per
            # request that the contract does not have (the harness flags it).
            self.pool = await asyncpg.create_pool(self.args.dsn, min_size=self.args.pool_size,
                                                  max_size=self.args.pool_size, reset=_no_reset,
                                                  max_queries=2**31)

    async def rank(self, body: bytes) -> tuple[int, bytes]:
        if self.bodies is not None:
            self.bodies.write(body + b"\n")
        t0 = time.perf_counter_ns()
        user_id, item_ids, top_k = parse_rank_body(body)
        t1 = time.perf_counter_ns()
        index = self.rank_count
        self.rank_count += 1
        if self.args.data == "synthetic":
            if not 1 <= user_id <= self.args.user_max:
                raise BadRequest(404, f"user {user_id} not found")
            items = synthetic_rank(user_id, item_ids, top_k, self.args.item_max)
            t2 = t3 = t4 = time.perf_counter_ns()
        else:
            async with self.pool.acquire() as conn:
                user = await conn.fetchval(USER_SQL, user_id)
                if user is None:
                    raise BadRequest(404, f"user {user_id} not found")
                rows = await conn.fetch(ITEMS_SQL, list(dict.fromkeys(item_ids)))
            t2 = time.perf_counter_ns()
            if rows:
                x = np.array([list(user) + list(r["features"]) for r in rows], dtype=np.float32)
                t3 = time.perf_counter_ns()
                scores = self.model.scores(x)
                t4 = time.perf_counter_ns()
                order = sorted(range(len(rows)), key=lambda k: (-scores[k], rows[k]["id"]))
                items = [{"id": rows[k]["id"], "score": float(scores[k])} for k in order[:top_k]]
            else:
                t3 = t4 = time.perf_counter_ns()
                items = []
        if self.args.wrong_score_from is not None and index >= self.args.wrong_score_from and items:
            items[0]["score"] += 1e-3  # a runtime that silently computes something else
        out = orjson.dumps({"user_id": user_id, "items": items})
        t5 = time.perf_counter_ns()
        for stage, a, b in (("parse", t0, t1), ("db", t1, t2), ("pre", t2, t3), ("infer", t3, t4),
                            ("post", t4, t5), ("total", t0, t5)):
            self.stats.samples[stage].append((b - a) / 1000.0)
        return 200, out

    async def handle(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes]:
        if path == b"/rank":
            if method != b"POST":
                return 405, orjson.dumps({"error": "method not allowed"})
            self.stats.requests += 1
            try:
                return await self.rank(body)
            except BadRequest as exc:
                self.stats.errors += 1
                return exc.status, orjson.dumps({"error": str(exc)})
        if path == b"/health":
            return 200, orjson.dumps({"status": "ok", "server": self.args.name})
        if path == b"/stats":
            return 200, orjson.dumps(self.stats.as_dict(self.args.name, self.args.workers))
        if path == b"/stats/reset" and method == b"POST":
            self.stats.reset()
            return 204, b""
        return 404, orjson.dumps({"error": f"no route {path.decode(errors='replace')}"})


REASONS = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 404: b"Not Found",
           405: b"Method Not Allowed"}


class Connection(asyncio.Protocol):
    """Keep-alive HTTP/1.1; requests are queued and answered in order by one task."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = None
        self.url = b""
        self.body: list[bytes] = []
        self.worker = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.worker = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc) -> None:
        if self.worker:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self.url).path
        self.queue.put_nowait((self.parser.get_method(), path, b"".join(self.body)))
        self.url, self.body = b"", []

    async def serve(self) -> None:
        while True:
            method, path, body = await self.queue.get()
            status, payload = await self.app.handle(method, path, body)
            head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" \
                % (status, REASONS.get(status, b"Error"), len(payload))
            self.transport.write(head + payload)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(args: argparse.Namespace) -> None:
    import uvloop

    async def main() -> None:
        app = App(args)
        await app.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if not args.ignore_sigterm:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        server = await loop.create_server(lambda: Connection(app), sock=bind(args.host, args.port))
        await stop.wait()
        server.close()
        if app.bodies is not None:
            app.bodies.close()
        if app.pool is not None:
            await app.pool.close()

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--model-dir", default="artifacts")
    parser.add_argument("--server-name", dest="name", default="fake")
    parser.add_argument("--data", choices=["synthetic", "db"], default="synthetic")
    parser.add_argument("--user-max", type=int, default=200_000)
    parser.add_argument("--item-max", type=int, default=100_000)
    parser.add_argument("--wrong-score-from", type=int, default=None,
                        help="from this /rank request on (0-based), the first score is off by 1e-3")
    parser.add_argument("--record-bodies", default=None,
                        help="append every /rank request body to this file (one per line)")
    parser.add_argument("--fail-at-start", default=None,
                        help="print this message on stderr and exit 3 instead of serving")
    parser.add_argument("--ignore-sigterm", action="store_true",
                        help="keep running on SIGTERM (the harness must escalate to SIGKILL)")
    args = parser.parse_args()
    if args.fail_at_start:
        print("starting fake server", file=sys.stderr)
        print(args.fail_at_start, file=sys.stderr)
        sys.exit(3)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Extra workers are forked children sharing the port, like the Python servers' --workers.
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            serve(args)
            os._exit(0)
        children.append(pid)
    serve(args)
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


if __name__ == "__main__":
    main()
