"""The published stack (`seed-torch`, `seed-onnx`, `seed-onnx-1t`), rebuilt on rankbench's contract.

As the study's servers did: FastAPI under uvicorn, GZip middleware on every response, the API key
checked by a `Security` dependency on the router (it runs on every request; without a configured
key it accepts everything, so benchmarks pay for it as the study did), a synchronous `def` endpoint
(run in AnyIO's worker thread pool), SQLAlchemy 2 ORM over psycopg 3 with create_engine's default
pool class, each query in its own `Session` (two pool check-outs per request) loading ORM entities,
pydantic models for the request and the response (`response_model`), scores as Python floats,
features joined with `np.tile` + `np.hstack` into a `torch.tensor`, the model then `torch.sigmoid`
(seed_runtime.py), results sorted with `sort(key=lambda ...)`.

Where the contract decides instead of the study:
- validation is strict (`StrictInt`, int64 bounds, 1..1000 items, top_k 1..1000): pydantic's default
  coercion would take `true` or `"7"` as an id; unknown fields are ignored; a body without a JSON
  Content-Type is parsed as JSON too (`strict_content_type=False`);
- the pool: QueuePool, create_engine's default class, sized by the contract (`--pool-size` over all
  workers, this worker's share as pool_size, max_overflow 0: never more connections than the
  contract's pool) instead of its default 5 + 10 overflow per worker; statement_timeout 2 s and a
  10 s wait for a pooled connection give 503 on a slow database (py_servers' deadlines);
- autocommit (`isolation_level="AUTOCOMMIT"`): by default each Session would wrap its query in
  BEGIN ... ROLLBACK, four more round trips per request (six in all), and the conformance suite's
  in-flight-at-SIGTERM case (every message to the database held 0.8 s) could then not answer and
  exit within the contract's 5 s; so a request here makes two check-outs and two statements, and
  the transaction round trips the study paid are not in this rung;
- the queries load ORM entities as the study did (`session.get(User, id)`, then
  `select(Item).where(Item.id.in_(ids))`, which SQLAlchemy expands to one bound parameter per id),
  where the other servers send the contract's two prepared statements on one connection;
- errors are the contract's JSON (common.py), and FastAPI's docs routes are off (unknown paths 404).
"""
from __future__ import annotations

import hmac
import math
import select as select_module
import sys
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
import sqlalchemy.exc
import torch
from fastapi import APIRouter, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import BigInteger, create_engine, event, select
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response

from framework_servers import common, seed_runtime
from framework_servers.common import MARKS, ApiKeyGate, RankStats
from py_servers.db import DB_TIMEOUT_S, POOL_TIMEOUT_S, describe
from rankbench.config import DEFAULT_TOP_K, MAX_ITEMS, MAX_TOP_K

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_now = common._now

Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]


class RankRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    user_id: Int64
    item_ids: Annotated[list[Int64], Field(min_length=1, max_length=MAX_ITEMS)]
    top_k: Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K


class RankedItem(BaseModel):
    id: int
    score: float


class RankResponse(BaseModel):
    user_id: int
    items: list[RankedItem]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    features: Mapped[list[float]] = mapped_column(ARRAY(REAL))


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    features: Mapped[list[float]] = mapped_column(ARRAY(REAL))


# What "the database is unavailable" looks like through SQLAlchemy and psycopg: connection refused
# or lost, statement_timeout (QueryCanceled is an OperationalError), no pooled connection in time.
DB_UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                  sqlalchemy.exc.TimeoutError, sqlalchemy.exc.DisconnectionError, OSError)


class State:
    """This worker's engine, model and settings (set by the lifespan)."""
    engine = None
    runtime = None
    worker: common.Worker | None = None
    api_key: bytes | None = None


state = State()


def sqlalchemy_url(dsn: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    return dsn


def make_engine(dsn: str, pool_size: int):
    engine = create_engine(
        sqlalchemy_url(dsn), pool_size=pool_size, max_overflow=0, pool_timeout=POOL_TIMEOUT_S,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": max(2, math.ceil(DB_TIMEOUT_S)),
                      "options": f"-c statement_timeout={round(DB_TIMEOUT_S * 1000)}"})
    event.listen(engine, "before_cursor_execute", _one_line, retval=True)
    event.listen(engine, "checkout", _drop_if_closed_by_server)
    return engine


def _drop_if_closed_by_server(dbapi_connection, record, proxy) -> None:
    """A pooled connection that PostgreSQL closed (restart, admin shutdown) has something to read
    (its FATAL notice, then EOF) while it waits idle in the pool: hand the pool a fresh one instead
    (DisconnectionError makes the pool reconnect), as asyncpg notices a closed connection itself.
    One select() per check-out, no round trip (pool_pre_ping would send a query)."""
    if dbapi_connection.closed or select_module.select([dbapi_connection.fileno()], [], [], 0)[0]:
        raise sqlalchemy.exc.DisconnectionError("connection closed by the server")


def _one_line(connection, cursor, statement, parameters, context, executemany):
    """SQLAlchemy writes each clause on its own line; PostgreSQL's log then cuts the statement into
    lines, and the fault suite reads one statement per log line (checking that ids are bound)."""
    return statement.replace("\n", " "), parameters


def database_problem() -> str | None:
    try:
        with state.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except DB_UNAVAILABLE as exc:
        return describe(exc)
    return None


# -- routes ---------------------------------------------------------------------------------------
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_api_key(api_key: str | None = Security(api_key_header)) -> None:
    expected = state.api_key
    if expected is not None and (api_key is None or not hmac.compare_digest(
            api_key.encode("latin-1"), expected)):
        raise HTTPException(status_code=401, detail=common.UNAUTHORIZED)


router = APIRouter(dependencies=[Security(require_api_key)])


@router.post("/rank", response_model=RankResponse)
def rank(req: RankRequest) -> RankResponse:
    marks = MARKS.get()
    marks.parsed = _now()
    try:
        with Session(state.engine) as session:
            user = session.get(User, req.user_id)
        if user is None:
            raise HTTPException(status_code=404, detail=f"user {req.user_id} not found")
        with Session(state.engine) as session:
            items = session.scalars(select(Item).where(Item.id.in_(req.item_ids))).all()
    except DB_UNAVAILABLE as exc:
        raise HTTPException(status_code=503,
                            detail=f"database unavailable: {describe(exc)}") from None
    marks.fetched = _now()
    if not items:
        return RankResponse(user_id=req.user_id, items=[])
    user_features = np.array(user.features, dtype=np.float32)
    item_features = np.array([item.features for item in items], dtype=np.float32)
    x = np.hstack([np.tile(user_features, (len(items), 1)), item_features])
    tensor = torch.tensor(x, dtype=torch.float32)
    marks.pre = _now()
    scores = state.runtime.scores(tensor)
    marks.infer = _now()
    ranked = [RankedItem(id=item.id, score=score) for item, score in zip(items, scores.tolist())]
    ranked.sort(key=lambda r: (-r.score, r.id))
    return RankResponse(user_id=req.user_id, items=ranked[:req.top_k])


@router.get("/stats")
async def stats() -> Response:
    return state.worker.stats(state.runtime.runtime_threads())


@router.post("/stats/reset", status_code=204)
async def stats_reset() -> Response:
    state.worker.shared.reset()
    return Response(status_code=204)


def health() -> Response:
    return state.worker.health(database_problem())


# -- app ------------------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI):
    worker = state.worker
    settings = worker.settings
    try:
        state.runtime = seed_runtime.load(settings.backend, settings.model_dir,
                                          settings.runtime_threads)
    except seed_runtime.ModelError as exc:
        common.fail(f"{settings.server_name}: {exc}")
    worker.shared.set_runtime_threads(worker.index, state.runtime.runtime_threads())
    state.engine = make_engine(settings.dsn, worker.pool_size)
    try:     # open every pooled connection before serving, as the other servers do
        connections = [state.engine.connect() for _ in range(worker.pool_size)]
        for connection in connections:
            connection.close()
    except DB_UNAVAILABLE as exc:
        print(f"{settings.server_name}: worker {worker.index}: database unavailable at start "
              f"({describe(exc)}); answering 503 until it returns", file=sys.stderr, flush=True)
    worker.set_ready(True)
    yield
    worker.set_ready(False)
    state.engine.dispose()


def create_app() -> FastAPI:
    from framework_servers.main import context

    settings, shared, lock = context()
    state.worker = common.Worker(settings, shared, lock)
    state.api_key = settings.api_key.encode("latin-1") if settings.api_key else None
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False, strict_content_type=False)
    app.add_api_route("/health", health, methods=["GET"])
    app.include_router(router)
    common.install_error_handlers(app)
    app.add_middleware(GZipMiddleware)
    if settings.api_key:
        app.add_middleware(ApiKeyGate, api_key=settings.api_key)
    app.add_middleware(RankStats, recorder=state.worker.recorder)
    return app
