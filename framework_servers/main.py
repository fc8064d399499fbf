"""`python -m framework_servers`: command line and uvicorn.

    python -m framework_servers --stack seed --backend onnx --server-name seed-onnx ...
    python -m framework_servers --stack fastapi --backend onnx --server-name fastapi-onnx ...

The contract's flags (`--host --port --dsn --workers --pool-size --model-dir --server-name
--api-key`) as py_servers reads them, plus `--stack` (seed: the published stack, seed_app.py;
fastapi: the framework alone, fastapi_app.py), `--runtime-threads` (seed stack: the runtime's
defaults or one thread) and `--access-log` (uvicorn's access log, on under `fastapi run`).

uvicorn runs the app as `uvicorn --workers W` does: one worker serves from this process; with W > 1,
uvicorn's own supervisor (uvicorn.supervisors.Multiprocess: one listening socket shared by all
workers, restarts of dead workers) with one change: its workers are forked instead of spawned, so
that they inherit the shared stats map (py_servers/stats.py, an anonymous shared mapping) that
/stats merges and /health reads. SIGTERM: uvicorn's graceful shutdown (stop accepting, close idle
connections, finish in-flight requests for at most SHUTDOWN_GRACE_S), exit 0.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from rankbench import config, serverflags

STACKS = {"seed": "framework_servers.seed_app:create_app",
          "fastapi": "framework_servers.fastapi_app:create_app"}
BACKENDS = {"seed": ("torch", "onnx"), "fastapi": ("onnx", "torch", "none", "candle")}
HTTP_FACET = "fastapi-uvicorn"
SHUTDOWN_GRACE_S = 3         # uvicorn's timeout_graceful_shutdown: in-flight requests
_CONTEXT: tuple | None = None  # (Settings, SharedStats, Lock), set before uvicorn starts


def context() -> tuple:
    if _CONTEXT is None:
        raise RuntimeError("framework_servers apps are created by `python -m framework_servers`")
    return _CONTEXT


def parse_args(argv: list[str] | None):
    from framework_servers.common import Settings

    parser = argparse.ArgumentParser(
        prog="python -m framework_servers",
        description="rankbench FastAPI + uvicorn servers (the published stack and the framework "
                    "alone); see docs/contract.md")
    parser.add_argument("--stack", required=True, choices=sorted(STACKS))
    parser.add_argument("--backend", required=True,
                        choices=sorted({b for names in BACKENDS.values() for b in names}))
    parser.add_argument("--runtime-threads", choices=("default", "one"), default="default",
                        help="seed stack: the runtime's own thread defaults (the study) or one "
                             "intra-op thread without spinning")
    parser.add_argument("--access-log", action="store_true", help="uvicorn's access log on stdout")
    serverflags.add_common(parser)
    args = parser.parse_args(argv)
    if args.backend not in BACKENDS[args.stack]:
        parser.error(f"--stack {args.stack} runs --backend {', '.join(BACKENDS[args.stack])}")
    if args.stack == "fastapi" and args.runtime_threads != "default":
        parser.error("--runtime-threads is for --stack seed (fastapi uses py_servers' backends)")
    api_key = serverflags.check_common(parser, args, lambda spec: (
        f"as a {spec.http} server with backend {spec.backend}, not a {HTTP_FACET} server with "
        f"--backend {args.backend}")
        if spec.http != HTTP_FACET or spec.backend != args.backend else None)
    name = args.server_name
    return Settings(server_name=name, stack=args.stack, backend=args.backend,
                    runtime_threads=args.runtime_threads, host=args.host, port=args.port,
                    dsn=args.dsn or config.dsn(), workers=args.workers, pool_size=args.pool_size,
                    model_dir=args.model_dir, access_log=args.access_log, api_key=api_key)


def check_model(settings) -> str | None:
    """Why the model cannot load (a missing file), before any worker starts; None if it can."""
    if settings.stack == "seed":
        from framework_servers.seed_runtime import MODEL_FILES
        path = Path(settings.model_dir) / MODEL_FILES[settings.backend]
        return None if path.is_file() else f"model file {path} not found: run `make model`"
    from py_servers.backends import BackendError, check_backend
    try:
        check_backend(settings.backend, settings.model_dir)
    except BackendError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    global _CONTEXT
    settings = parse_args(argv)
    if settings.stack == "fastapi":
        # As py_servers/main.py: one thread for every native pool numpy or the runtime might start.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    problem = check_model(settings)
    if problem is not None:
        print(f"{settings.server_name}: {problem}", file=sys.stderr)
        return 1

    import uvicorn

    from framework_servers.protocol import ContractHttpToolsProtocol
    from py_servers.http import IDLE_TIMEOUT_S
    from py_servers.stats import SharedStats

    fork = multiprocessing.get_context("fork")
    _CONTEXT = (settings, SharedStats(settings.workers), fork.Lock())
    uvicorn_config = uvicorn.Config(
        STACKS[settings.stack], factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, http=ContractHttpToolsProtocol, ws="none", lifespan="on",
        log_level="info" if settings.access_log else "warning", access_log=settings.access_log,
        timeout_keep_alive=IDLE_TIMEOUT_S, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    if settings.workers == 1:
        # uvicorn re-raises SIGTERM after its graceful shutdown, under the handler it found:
        # with the default handler the process would die by the signal instead of exiting 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        server = uvicorn.Server(uvicorn_config)
        server.run()
        return 0 if server.started else 1

    from uvicorn import _subprocess
    from uvicorn.supervisors import Multiprocess

    _subprocess.spawn = fork          # see the module docstring
    sock = uvicorn_config.bind_socket()
    Multiprocess(uvicorn_config, sockets=[sock]).run()
    return 0
