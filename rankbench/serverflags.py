"""The contract's common command line of every Python server (py_servers, framework_servers): the
flags, their checks and the settings they become, once. Importing it starts nothing (no runtime, no
thread pool)."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rankbench import config


@dataclass(frozen=True, kw_only=True)
class CommonSettings:
    """The common flags' values; each server's `Settings` adds its own fields."""
    server_name: str          # reported in /health, /stats and the Server header
    host: str
    port: int
    dsn: str
    workers: int
    pool_size: int
    model_dir: Path
    api_key: str | None = field(default=None, repr=False)    # never printed

    def pool_share(self, worker: int) -> int:
        """--pool-size is the total over all workers; at least one connection each."""
        return share(self.pool_size, self.workers, worker)


def share(total: int, workers: int, worker: int) -> int:
    """Worker `worker`'s part of `total` split over `workers` (the first ones take the remainder),
    at least one."""
    base, extra = divmod(total, workers)
    return max(1, base + (1 if worker < extra else 0))


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-name", required=True, metavar="NAME",
                        help="the name reported in /health and /stats (a name from "
                             "rankbench.servers, or any other name with --port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None,
                        help="default: the port of --server-name in rankbench.servers")
    parser.add_argument("--dsn", default=None, help="default: $DATABASE_URL or the private cluster")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument("--pool-size", type=int, default=8,
                        help="database connections in total, split over the workers")
    parser.add_argument("--model-dir", type=Path, default=config.ARTIFACTS_DIR)
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="require header `X-API-Key: KEY` on every route but GET /health "
                             "(default: $RANKBENCH_API_KEY; unset or empty: no key)")


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 mismatch: Callable[[object], str | None]) -> str | None:
    """Check the common flags (argparse errors, exit 2), fill --port from the registry and return
    the API key (None: no key). `mismatch(spec)` says how a registered name differs from this
    server ("as a rust server ...": results are keyed by the name, so one server never reports
    under another's), or None."""
    if args.api_key == "":
        # An empty key would accept an empty header: refuse rather than guess what was meant.
        print("--api-key must not be empty", file=sys.stderr)
        raise SystemExit(2)
    api_key = args.api_key if args.api_key is not None else (
        os.environ.get("RANKBENCH_API_KEY") or None)
    name = args.server_name
    # The name goes into the Server header verbatim: printable ASCII, no spaces (no CR/LF).
    if not name or not all("!" <= c <= "~" for c in name):
        parser.error(f"--server-name must be printable ASCII without spaces, got {name!r}")
    from rankbench.servers import SERVERS
    spec = SERVERS.get(name)
    if spec is not None:
        why = mismatch(spec)
        if why:
            parser.error(f"--server-name {name} is registered in rankbench.servers {why}")
    if args.port is None:
        if spec is None:
            parser.error("--port is required for a server not in rankbench.servers")
        args.port = spec.default_port
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.pool_size < 1:
        parser.error(f"--pool-size must be >= 1, got {args.pool_size}")
    return api_key
