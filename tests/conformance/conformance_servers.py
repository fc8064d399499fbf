"""Helpers of the HTTP conformance suite: which servers (with which --workers), and the score oracle.

Servers are chosen and started by the one launcher, tests/servers.py (RANKBENCH_SERVERS selects;
default: every registered server whose prerequisites exist). RANKBENCH_WORKERS: comma list of
--workers values; default "1,2" (RANKBENCH_WORKERS_OTHER: the values for servers outside the main
study, default the same). Each (server, workers) pair is started once per session on a free
port, waited for until GET /health answers 200, and stopped with SIGTERM (then SIGKILL).
"""
from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import servers as launcher  # noqa: E402  (tests/servers.py)
from servers import RunningServer  # noqa: E402,F401

from rankbench.servers import MAIN, SERVERS, ServerSpec  # noqa: E402


def _workers(variable: str, default: str) -> list[int]:
    raw = os.environ.get(variable, default)
    try:
        return [int(w) for w in raw.split(",") if w.strip()]
    except ValueError:
        raise pytest.UsageError(f"{variable} must be a comma list of integers, "
                                f"got {raw!r}") from None


def _selection() -> tuple[list[tuple[str, int]], bool]:
    """Every selected server at every RANKBENCH_WORKERS value; a server outside the main study
    (a ladder rung, a batching variant, another interpreter) at RANKBENCH_WORKERS_OTHER when that
    is set (CI: 2, the multi-process path; the fault suite runs every server with 1 worker)."""
    names, explicit = launcher.selection()
    workers = _workers("RANKBENCH_WORKERS", "1,2")
    other = _workers("RANKBENCH_WORKERS_OTHER", ",".join(map(str, workers)))
    return [(n, w) for n in names
            for w in (workers if n not in SERVERS or MAIN in SERVERS[n].studies else other)], \
        explicit


CASES, EXPLICIT = _selection()


@dataclass
class ServerCase:
    name: str
    workers: int

    @property
    def spec(self) -> ServerSpec:
        return SERVERS[self.name]


def resolve_case(case: ServerCase) -> ServerSpec:
    """The spec, or a failure/skip explaining why this server cannot run here."""
    return launcher.resolve(case.name, EXPLICIT)


def start_server(spec: ServerSpec, workers: int, dsn: str, model_dir: Path, *,
                 wait_for: str = "healthy", pool_size: int = 8) -> RunningServer:
    return launcher.start(spec, dsn, workers=workers, pool_size=pool_size, model_dir=model_dir,
                          wait_for=wait_for)


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
