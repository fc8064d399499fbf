"""`fastapi-onnx`: the framework alone. FastAPI under uvicorn (the same protocol as the seed stack),
with everything else as in py-onnx: an `async def` endpoint, py_servers' asyncpg database code (one
pooled connection, the contract's two prepared statements, the same deadlines), py_servers' request
validation and orjson response encoding, and its ONNX Runtime backend (one intra-op thread, no
spinning). Against py-onnx it isolates the HTTP stack: uvicorn + Starlette + FastAPI's routing,
middleware and exception handling in place of py_servers' own httptools protocol. No GZip, and the
API key only as py_servers checks it (a gate before routing, installed when a key is set).
"""
from __future__ import annotations

import gc
import sys
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from framework_servers import common
from framework_servers.common import MARKS, ApiKeyGate, RankStats, error_response
from py_servers.app import BadRequest, features_to_input, parse_rank, top_k_body
from py_servers.backends import BackendError, load_backend, runtime_threads, warm_up
from py_servers.db import UNAVAILABLE, Database, describe

_now = common._now


class State:
    database: Database | None = None
    backend = None
    infer = None
    worker: common.Worker | None = None


state = State()


async def rank(request: Request) -> Response:
    marks = MARKS.get()
    try:
        body = await request.body()
    except ClientDisconnect:
        return error_response(400, "the client went away before its body was complete")
    try:
        user_id, item_ids, top_k = parse_rank(body)
    except BadRequest as exc:
        return error_response(400, str(exc))
    marks.parsed = _now()
    try:
        user, rows = await state.database.fetch(user_id, item_ids)
    except UNAVAILABLE as exc:
        return error_response(503, f"database unavailable: {describe(exc)}")
    if user is None:
        return error_response(404, f"user {user_id} not found")
    marks.fetched = _now()
    if rows:
        x, ids = features_to_input(user, rows)
        marks.pre = _now()
        scores = state.infer(x)
        marks.infer = _now()
        payload = top_k_body(user_id, ids, scores, top_k)
    else:
        payload = orjson.dumps({"user_id": user_id, "items": []})
    return Response(payload, media_type="application/json")


async def health() -> Response:
    return state.worker.health(await state.database.check())


async def stats() -> Response:
    return state.worker.stats(runtime_threads(state.backend))


async def stats_reset() -> Response:
    state.worker.shared.reset()
    return Response(status_code=204)


@asynccontextmanager
async def lifespan(app: FastAPI):
    worker = state.worker
    settings = worker.settings
    try:
        state.backend = load_backend(settings.backend, settings.model_dir)
        warm_up(state.backend)
    except BackendError as exc:
        common.fail(f"{settings.server_name}: {exc}")
    state.infer = state.backend.infer
    worker.shared.set_runtime_threads(worker.index, runtime_threads(state.backend))
    state.database = Database(settings.dsn, worker.pool_size)
    try:
        problem = await state.database.open()
    except RuntimeError as exc:
        common.fail(f"{settings.server_name}: {exc}")
    if problem is not None:
        print(f"{settings.server_name}: worker {worker.index}: database unavailable at start "
              f"({problem}); answering 503 until it returns", file=sys.stderr, flush=True)
    # As py_servers does: keep the cyclic collector from walking the runtime's modules again.
    gc.collect()
    gc.freeze()
    worker.set_ready(True)
    yield
    worker.set_ready(False)
    await state.database.close(1.0)


def create_app() -> FastAPI:
    from framework_servers.main import context

    settings, shared, lock = context()
    state.worker = common.Worker(settings, shared, lock)
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.add_api_route("/rank", rank, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/stats", stats, methods=["GET"])
    app.add_api_route("/stats/reset", stats_reset, methods=["POST"], status_code=204)
    common.install_error_handlers(app)
    if settings.api_key:
        app.add_middleware(ApiKeyGate, api_key=settings.api_key)
    app.add_middleware(RankStats, recorder=state.worker.recorder)
    return app
