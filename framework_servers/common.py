"""What both framework stacks share: the worker's context, the /rank stage timer, the API-key gate,
the contract's JSON errors as FastAPI exception handlers, and the /stats and /health payloads.

Stages (docs/contract.md) in a framework server are measured from the first line of application
code, `RankStats`, the outermost middleware of the app, entered once uvicorn has parsed the request
(for a body that arrives with its head, the whole request is in by then). Inner code marks its
boundaries on a `Marks` object found through a context variable (AnyIO copies the context into the
worker thread of a `def` endpoint), and RankStats records the stages just before it hands the last
response bytes to uvicorn, so that a client that reads /stats from another worker right after its
answer sees its request counted. What the timers cannot see: uvicorn's parsing and task start
before RankStats, and its write of the response after it.
"""
from __future__ import annotations

import contextvars
import hmac
import os
import sys
import time
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from py_servers.stats import SharedStats, StatsRecorder
from rankbench.serverflags import CommonSettings

_now = time.perf_counter_ns
UNAUTHORIZED = "missing or invalid API key"


@dataclass(frozen=True)
class Settings(CommonSettings):
    stack: str                # "seed" (the published stack) or "fastapi" (the framework alone)
    backend: str              # reported in /stats
    runtime_threads: str      # "default" (the runtime's own) or "one"
    access_log: bool


class Worker:
    """One worker process: its slot in the shared stats map and its recorder.

    uvicorn's supervisor does not number its workers, so each claims the first slot whose owner is
    gone (a restarted worker takes over the slot of the one that died)."""

    def __init__(self, settings: Settings, shared: SharedStats, lock):
        self.settings = settings
        self.shared = shared
        with lock:
            owners = [w["pid"] for w in shared.snapshot()["per_worker"]]
            free = [i for i, pid in enumerate(owners) if pid == 0 or not _alive(pid)]
            if not free:
                raise RuntimeError("no free worker slot in the shared stats map")
            self.index = free[0]
            self.pool_size = settings.pool_share(self.index)
            shared.set_worker(self.index, pid=os.getpid(), pool_size=self.pool_size)
        self.recorder: StatsRecorder = shared.recorder(self.index)

    def set_ready(self, ready: bool) -> None:
        self.shared.set_ready(self.index, ready)

    def health(self, problem: str | None) -> Response:
        name = self.settings.server_name
        if problem is not None:
            error = f"database unavailable: {problem}"
        else:
            ready, workers = self.shared.ready_workers(), self.settings.workers
            error = None if ready >= workers else f"{ready} of {workers} workers ready"
        if error is None:
            return json_response(200, {"status": "ok", "server": name})
        return json_response(503, {"status": "unavailable", "server": name, "error": error})

    def stats(self, runtime_threads: dict) -> Response:
        settings = self.settings
        self.shared.set_runtime_threads(self.index, runtime_threads)
        merged = self.shared.snapshot()
        return json_response(200, {
            "server": settings.server_name, "backend": settings.backend,
            "workers": settings.workers, "requests": merged["requests"],
            "errors": merged["errors"], "stages": merged["stages"], "timers": True,
            "pool": {"total": sum(settings.pool_share(w) for w in range(settings.workers)),
                     "per_worker": [w["pool_size"] for w in merged["per_worker"]]},
            "per_worker": [{"pid": w["pid"], "ready": w["ready"], "requests": w["requests"],
                            "errors": w["errors"]} for w in merged["per_worker"]],
            "runtime_threads": self.shared.runtime_threads(),
        })


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return pid != os.getpid()


# -- responses ------------------------------------------------------------------------------------
def json_response(status: int, payload, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json",
                    headers=headers)


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


def validation_message(errors: list[dict]) -> str:
    """The first pydantic error as one line naming the field: `item_ids[3]: Input should be ...`.
    The input itself is never quoted (it may be 60 KB)."""
    if not errors:
        return "invalid request"
    error = errors[0]
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"malformed JSON: {str(error.get('ctx', {}).get('error', ''))[:100]}"
    loc = [part for part in error.get("loc", ()) if part != "body"]
    if not loc:
        if isinstance(error.get("input"), (bytes, bytearray)):   # a Content-Type that is not JSON
            return "body must be JSON (Content-Type: application/json)"
        return "body must be a JSON object with user_id, item_ids and top_k"
    name = str(loc[0]) + "".join(f"[{part}]" for part in loc[1:])
    return f"{name}: {error.get('msg', 'invalid value')[:200]}"


def install_error_handlers(app: FastAPI) -> None:
    """Every error the framework produces becomes the contract's `{"error": ...}`."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"unknown path {request.url.path[:100]}"
        elif exc.status_code == 405:
            message = f"method {request.method[:20]} not allowed on {request.url.path[:100]}"
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            message = "malformed JSON: the body is not a JSON document"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, validation_message(list(exc.errors())))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


# -- stages ---------------------------------------------------------------------------------------
class Marks:
    """Stage boundaries of one /rank request, in perf_counter_ns (0: not reached)."""

    __slots__ = ("received", "parsed", "fetched", "pre", "infer")

    def __init__(self, received: int):
        self.received = received
        self.parsed = self.fetched = self.pre = self.infer = 0


MARKS: contextvars.ContextVar[Marks] = contextvars.ContextVar("rankbench_marks")


def mark() -> Marks:
    return MARKS.get()


class RankStats:
    """Outermost middleware: counts every request to /rank (errors: non-2xx) and records the stages
    of its 200 answers."""

    def __init__(self, app, recorder: StatsRecorder):
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/rank":
            await self.app(scope, receive, send)
            return
        marks = Marks(_now())
        token = MARKS.set(marks)
        recorder = self.recorder
        status = 0

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False) and status:
                done = _now()
                recorder.record_request(status >= 300, stages_of(marks, done)
                                        if status == 200 else None)
                status = -status     # recorded
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if status >= 0:
                recorder.record_request(True)
            raise
        finally:
            MARKS.reset(token)


def stages_of(m: Marks, done: int):
    """(parse, db, pre, infer, post, total) in ns; None for stages not reached."""
    if not (m.parsed and m.fetched):
        return None
    if m.infer:
        return (m.parsed - m.received, m.fetched - m.parsed, m.pre - m.fetched, m.infer - m.pre,
                done - m.infer, done - m.received)
    return (m.parsed - m.received, m.fetched - m.parsed, None, None, done - m.fetched,
            done - m.received)


class ApiKeyGate:
    """With an API key configured: every request but GET /health needs `X-API-Key`, checked before
    routing and validation (an unauthenticated client learns nothing about paths, methods or
    bodies). Installed only when a key is set."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode("latin-1")
        self.unauthorized = error_response(401, UNAUTHORIZED)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not (scope["method"] == "GET"
                                            and scope["path"] == "/health"):
            sent = next((value for name, value in scope["headers"] if name == b"x-api-key"), None)
            if sent is None or not hmac.compare_digest(sent, self.key):
                await self.unauthorized(scope, receive, send)
                return
        await self.app(scope, receive, send)


def fail(message: str) -> None:
    """One clear line on stderr and exit 1 (inside a worker: uvicorn sees a failed startup)."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)
