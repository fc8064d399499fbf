"""PostgreSQL access: one asyncpg pool per worker and the contract's two queries.

Choices that matter for the benchmark (and match the Rust server's deadpool-postgres setup):
- no reset query on release: asyncpg's default runs `RESET ALL; CLOSE ALL; UNLISTEN *; ...` every
  time a connection goes back to the pool, a third round trip per request that deadpool's default
  (fast recycling) does not make. Nothing here changes session state, so there is nothing to reset;
- no recycling after N queries and no idle expiry: the connections live as long as the server;
- statements are prepared once per connection by asyncpg's statement cache, keyed by the SQL text;
- every database step of a request runs under one deadline (DB_TIMEOUT_S): a slow or hung database
  gives 503 instead of an unbounded wait, and a refused or broken connection gives 503 at once. A
  broken connection is dropped by the pool and the next acquire reconnects, so the server recovers
  by itself when the database comes back.
"""
from __future__ import annotations

import asyncio
import os

import asyncpg

USER_SQL = "SELECT features FROM users WHERE id = $1"
ITEMS_SQL = "SELECT id, features FROM items WHERE id = ANY($1)"


def _db_timeout() -> float:
    raw = os.environ.get("RANKBENCH_DB_TIMEOUT_S", "2.0")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"RANKBENCH_DB_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"RANKBENCH_DB_TIMEOUT_S must be positive, got {raw!r}")
    return value


DB_TIMEOUT_S = _db_timeout()

# What "the database is unavailable" looks like from asyncpg: refused/reset sockets, timeouts, a
# closed connection, server shutting down or starting, too many connections, a cancelled statement.
UNAVAILABLE = (
    OSError,
    TimeoutError,                              # asyncio.TimeoutError is the same class on 3.11
    asyncpg.InterfaceError,                    # connection closed / not connected
    asyncpg.PostgresConnectionError,           # SQLSTATE class 08
    asyncpg.OperatorInterventionError,         # class 57: admin shutdown, cannot connect now, cancel
    asyncpg.InsufficientResourcesError,        # class 53: too many connections, out of memory
)

MISCONFIGURED = (
    asyncpg.ClientConfigurationError,          # malformed DSN or connection options
    asyncpg.InvalidAuthorizationSpecificationError,   # class 28: no such role, bad password
    asyncpg.InvalidCatalogNameError,           # 3D000: no such database
)


def describe(exc: BaseException) -> str:
    """A short reason for the 503 body (no DSN, no stack)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {DB_TIMEOUT_S:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


async def _no_reset(connection) -> None:
    """Pool release hook: nothing to reset (see module docstring)."""


class Database:
    def __init__(self, dsn: str, pool_size: int):
        self.dsn = dsn
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> str | None:
        """Create the pool and connect it fully; return None, or why the database is unavailable
        (the server then starts anyway, answers 503 and connects when the database returns)."""
        self.pool = asyncpg.create_pool(
            self.dsn, min_size=0, max_size=self.pool_size,
            max_queries=2**62, max_inactive_connection_lifetime=0,
            reset=_no_reset, timeout=DB_TIMEOUT_S,
        )
        try:
            await self.pool
        except Exception as exc:  # create_pool() with min_size=0 connects nothing: only bad options
            raise RuntimeError(f"cannot create the database pool: {exc}") from None
        return await self.warm()

    async def warm(self) -> str | None:
        """Open every pooled connection and prepare both statements on each."""
        async def prepare_one():
            async with self.pool.acquire() as connection:
                await connection.fetchval(USER_SQL, 0)
                await connection.fetch(ITEMS_SQL, [0])

        try:
            async with asyncio.timeout(5 * DB_TIMEOUT_S):
                await asyncio.gather(*(prepare_one() for _ in range(self.pool_size)))
        except MISCONFIGURED as exc:
            # Waiting would not help: a malformed DSN, wrong credentials, no such database.
            raise RuntimeError(f"cannot use the database: {describe(exc)}") from None
        except UNAVAILABLE as exc:
            return describe(exc)
        return None

    async def fetch(self, user_id: int, item_ids: list[int]):
        """(user features or None, item rows); the items query runs only for a known user.
        Both queries on one pooled connection, under one deadline."""
        async with asyncio.timeout(DB_TIMEOUT_S):
            async with self.pool.acquire() as connection:
                user = await connection.fetchval(USER_SQL, user_id)
                if user is None:
                    return None, None
                rows = await connection.fetch(ITEMS_SQL, item_ids)
        return user, rows

    async def check(self) -> str | None:
        """None when the database answers, else the reason."""
        try:
            async with asyncio.timeout(DB_TIMEOUT_S):
                async with self.pool.acquire() as connection:
                    await connection.fetchval("SELECT 1")
        except UNAVAILABLE as exc:
            return describe(exc)
        return None

    async def close(self, timeout: float) -> None:
        if self.pool is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.pool.close()
        except (TimeoutError, *UNAVAILABLE):
            self.pool.terminate()
