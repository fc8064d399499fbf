"""Helpers of the HTTP conformance suite: which servers, how to start them, the score oracle.

Servers come from the registry `rankbench.servers.SERVERS`, so any server of docs/contract.md (Python
or Rust) runs the same suite. Selection:
- RANKBENCH_SERVERS: comma list of registry names; default: every registered server whose `needs` exist.
  A server named here explicitly whose prerequisites are missing FAILS instead of being skipped.
- RANKBENCH_WORKERS: comma list of --workers values; default "1,2".

Each (server, workers) pair is started once per session on a free port, waited for until
GET /health answers 200, and stopped with SIGTERM (then SIGKILL) at the end of its tests.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conformance_http import Connection

from rankbench.servers import SERVERS, ServerSpec

STARTUP_TIMEOUT_S = 90.0     # torch import + warm-up on a busy 2-core machine
STOP_TIMEOUT_S = 5.0


def _selection() -> tuple[list[tuple[str, int]], bool]:
    raw = os.environ.get("RANKBENCH_SERVERS", "").strip()
    if raw:
        names = [n.strip() for n in raw.split(",") if n.strip()]
        explicit = True
    else:
        names = [name for name, spec in SERVERS.items()
                 if all(Path(p).exists() for p in spec.needs)]
        explicit = False
    raw_workers = os.environ.get("RANKBENCH_WORKERS", "1,2")
    try:
        workers = [int(w) for w in raw_workers.split(",") if w.strip()]
    except ValueError:
        raise pytest.UsageError(f"RANKBENCH_WORKERS must be a comma list of integers, "
                                f"got {raw_workers!r}") from None
    return [(n, w) for n in names for w in workers], explicit


CASES, EXPLICIT = _selection()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerCase:
    name: str
    workers: int

    @property
    def spec(self) -> ServerSpec:
        return SERVERS[self.name]


@dataclass
class RunningServer:
    spec: ServerSpec
    workers: int
    host: str
    port: int
    process: subprocess.Popen
    stderr_path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def real_scores(self) -> bool:
        return self.spec.real_scores

    def connect(self, timeout: float = 15.0) -> Connection:
        return Connection(self.host, self.port, timeout)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no stderr)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty stderr)"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code (None if it was killed)."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None


def resolve_case(case: ServerCase) -> ServerSpec:
    """The spec, or a failure/skip explaining why this server cannot run here."""
    spec = SERVERS.get(case.name)
    if spec is None:
        pytest.fail(f"RANKBENCH_SERVERS names {case.name!r}, which is not in rankbench.servers "
                    f"(known: {', '.join(SERVERS)})")
    missing = [str(p) for p in spec.needs if not Path(p).exists()]
    if missing:
        message = f"{case.name}: prerequisites missing: {', '.join(missing)}"
        if EXPLICIT:
            pytest.fail(message)
        pytest.skip(message)
    return spec


def start_server(spec: ServerSpec, workers: int, dsn: str, model_dir: Path, *,
                 wait_for: str = "healthy", pool_size: int = 8) -> RunningServer:
    """Start `spec` on a free port. wait_for="healthy": until GET /health is 200;
    "answering": until /health answers at all (a server whose database is down)."""
    port = free_port()
    command = spec.command(host="127.0.0.1", port=port, dsn=dsn, workers=workers,
                           pool_size=pool_size, model_dir=model_dir)
    log = tempfile.NamedTemporaryFile(prefix=f"{spec.name}-", suffix=".stderr", delete=False)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                               start_new_session=True)
    log.close()
    server = RunningServer(spec, workers, "127.0.0.1", port, process, Path(log.name))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{spec.name} --workers {workers} exited with {process.returncode} "
                        f"during startup:\n{server.stderr_tail()}")
        try:
            with server.connect(timeout=5) as conn:
                response = conn.request("GET", "/health")
            if response.status == 200 or wait_for == "answering":
                return server
            last = f"{response.status} {response.body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"{spec.name} --workers {workers}: /health not ready within {STARTUP_TIMEOUT_S:.0f} s "
                f"(last: {last}); command: {' '.join(command)}\nstderr:\n{server.stderr_tail()}")


class Oracle:
    """Expected answers: rows read from the database, scored by the plain-numpy reference."""

    def __init__(self, dsn: str, model_dir: Path):
        from rankbench.reference import load_reference

        self.dsn = dsn
        self.model = load_reference(model_dir)

    async def _rows(self, user_id: int, item_ids: list[int]):
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            user = await conn.fetchval("SELECT features FROM users WHERE id = $1", user_id)
            rows = await conn.fetch("SELECT id, features FROM items WHERE id = ANY($1)", item_ids)
        finally:
            await conn.close()
        return user, {row["id"]: row["features"] for row in rows}

    def found_items(self, item_ids: list[int]) -> set[int]:
        _, items = asyncio.run(self._rows(1, item_ids))
        return set(items)

    def scores(self, user_id: int, item_ids: list[int]) -> dict[int, float]:
        """Reference score of every found item (empty when none is found)."""
        import numpy as np

        user, items = asyncio.run(self._rows(user_id, item_ids))
        assert user is not None, f"oracle: user {user_id} is not in the database"
        if not items:
            return {}
        ids = sorted(items)
        x = np.array([list(user) + list(items[i]) for i in ids], dtype=np.float32)
        return dict(zip(ids, self.model.scores(x).tolist()))
