"""PostgreSQL access: one asyncpg pool per worker and the contract's two queries.

Choices that matter for the benchmark (and match the Rust server's deadpool-postgres setup):
- no reset query on release: asyncpg's default runs `RESET ALL; CLOSE ALL; UNLISTEN *; ...` every
  time a connection goes back to the pool, a third round trip per request that deadpool's default
  (fast recycling) does not make. Nothing here changes session state, so there is nothing to reset;
- no recycling after N queries and no idle expiry: the connections live as long as the server;
- statements are prepared once per connection by asyncpg's statement cache, keyed by the SQL text;
- two deadlines, as in the Rust server (deadpool wait 5 s, statement_timeout 2 s): waiting for a
  pooled connection may take up to POOL_TIMEOUT_S (10 s), so that a burst far larger than the pool
  queues instead of failing; the queries themselves get DB_TIMEOUT_S (2 s), enforced by PostgreSQL
  (`statement_timeout`, sent once in the startup packet: no per-request cost, and the connection
  stays usable) with a client-side backstop QUERY_GRACE_S later for a database that does not answer
  at all. Either way a slow or hung database gives 503 instead of an unbounded wait, and a refused
  or broken connection gives 503 at once;
- a connection that failed mid-operation never goes back to the pool as it is: with no reset query
  on release nothing would bring its protocol state back to idle (the next request would then fail
  with "another operation is in progress"), so it is terminated and the pool reconnects on the next
  acquire. The one exception is a statement cancelled by statement_timeout: PostgreSQL answers it
  with an ordinary error followed by ReadyForQuery, after which the connection is idle and healthy.
  The server recovers by itself when the database comes back.
"""
from __future__ import annotations

import asyncio
import os

import asyncpg

USER_SQL = "SELECT features FROM users WHERE id = $1"
ITEMS_SQL = "SELECT id, features FROM items WHERE id = ANY($1)"
# The micro-batching variant (py_servers/batching.py): the user query widened to a batch's users.
BATCH_USERS_SQL = "SELECT id, features FROM users WHERE id = ANY($1)"


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name) or str(default)
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < 1e6:
        raise SystemExit(f"{name} must be positive, got {raw!r}")
    return value


DB_TIMEOUT_S = _env_seconds("RANKBENCH_DB_TIMEOUT_S", 2.0)       # both queries (statement_timeout)
POOL_TIMEOUT_S = _env_seconds("RANKBENCH_POOL_TIMEOUT_S", 10.0)  # waiting for a pooled connection
QUERY_GRACE_S = 0.5     # the client-side backstop fires this long after statement_timeout


class PoolTimeout(TimeoutError):
    """No pooled connection became free within POOL_TIMEOUT_S."""

# What "the database is unavailable" looks like from asyncpg: refused/reset sockets, timeouts, a
# closed connection, server shutting down or starting, too many connections, a cancelled statement.
UNAVAILABLE = (
    OSError,
    TimeoutError,                              # asyncio.TimeoutError is the same class on 3.11
    asyncpg.InterfaceError,                    # connection closed / not connected
    asyncpg.PostgresConnectionError,           # SQLSTATE class 08, ConnectionDoesNotExistError
    asyncpg.OperatorInterventionError,         # class 57: admin shutdown, cannot connect now, cancel
    asyncpg.InsufficientResourcesError,        # class 53: too many connections, out of memory
    asyncpg.InternalClientError,               # protocol state broken by a connection lost mid-way
)

MISCONFIGURED = (
    asyncpg.ClientConfigurationError,          # malformed DSN or connection options
    asyncpg.InvalidAuthorizationSpecificationError,   # class 28: no such role, bad password
    asyncpg.InvalidCatalogNameError,           # 3D000: no such database
)


def describe(exc: BaseException) -> str:
    """A short reason for the 503 body (no DSN, no stack)."""
    if isinstance(exc, PoolTimeout):
        return f"no pooled connection free within {POOL_TIMEOUT_S:g} s"
    if isinstance(exc, TimeoutError):
        return f"no answer within {DB_TIMEOUT_S:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]


async def _no_reset(connection) -> None:
    """Pool release hook: nothing to reset (see module docstring)."""


def _discard_unless_idle(connection, exc: BaseException) -> None:
    """After `exc` interrupted work on `connection`: terminate it unless it is known to be idle, so
    that release() hands the pool a closed holder (reconnected on the next acquire) rather than a
    connection still inside an operation."""
    if type(exc) is not asyncpg.QueryCanceledError:
        connection.terminate()


async def _user_and_items(connection, user_id: int, item_ids: list[int]):
    user = await connection.fetchval(USER_SQL, user_id)
    return user, (None if user is None else await connection.fetch(ITEMS_SQL, item_ids))


async def _users_and_items(connection, user_ids: list[int], items_for):
    """A batch's two queries: every user, then the items of the requests whose user exists
    (`items_for(found users)`; not run when there are none, as for an unknown user alone)."""
    users = dict(await connection.fetch(BATCH_USERS_SQL, user_ids))
    item_ids = items_for(users) if users else None
    return users, (await connection.fetch(ITEMS_SQL, item_ids) if item_ids else [])


async def _select_one(connection) -> None:
    await connection.fetchval("SELECT 1")


class Database:
    def __init__(self, dsn: str, pool_size: int, *, batching: bool = False):
        self.dsn = dsn
        self.pool_size = pool_size
        self.batching = batching      # which user statement warm() prepares: the one sent later
        self.pool: asyncpg.Pool | None = None
        self._loop_time = None

    async def open(self) -> str | None:
        """Create the pool and connect it fully; return None, or why the database is unavailable
        (the server then starts anyway, answers 503 and connects when the database returns)."""
        self.pool = asyncpg.create_pool(
            self.dsn, min_size=0, max_size=self.pool_size,
            max_queries=2**62, max_inactive_connection_lifetime=0,
            reset=_no_reset, timeout=DB_TIMEOUT_S,
            server_settings={"statement_timeout": str(round(DB_TIMEOUT_S * 1000))},
        )
        self._loop_time = asyncio.get_running_loop().time
        try:
            await self.pool
        except Exception as exc:  # create_pool() with min_size=0 connects nothing: only bad options
            raise RuntimeError(f"cannot create the database pool: {exc}") from None
        return await self.warm()

    async def warm(self) -> str | None:
        """Open every pooled connection and prepare both statements on each."""
        async def prepare_one():
            connection = await self.pool.acquire()
            try:
                if self.batching:
                    await connection.fetch(BATCH_USERS_SQL, [0])
                else:
                    await connection.fetchval(USER_SQL, 0)
                await connection.fetch(ITEMS_SQL, [0])
            except BaseException as exc:
                _discard_unless_idle(connection, exc)
                raise
            finally:
                await self.pool.release(connection)

        try:
            async with asyncio.timeout(5 * DB_TIMEOUT_S):
                await asyncio.gather(*(prepare_one() for _ in range(self.pool_size)))
        except MISCONFIGURED as exc:
            # Waiting would not help: a malformed DSN, wrong credentials, no such database.
            raise RuntimeError(f"cannot use the database: {describe(exc)}") from None
        except UNAVAILABLE as exc:
            return describe(exc)
        return None

    async def _on_connection(self, operation, *args):
        """`await operation(connection, *args)` on a pooled connection, under two deadlines kept by
        one timer: POOL_TIMEOUT_S for the pool wait (PoolTimeout), then DB_TIMEOUT_S +
        QUERY_GRACE_S for the operation (TimeoutError).

        The one copy of this block, the work passed in. Measured (CPU time per fetch, fake pool)
        against the block written inline: this form and a class-based async context manager both
        cost under 1 us more, within noise of each other; contextlib.asynccontextmanager costs 4-6
        us more. This form keeps the control flow of the inline block exactly."""
        connection = None
        try:
            async with asyncio.timeout(POOL_TIMEOUT_S) as deadline:
                connection = await self.pool.acquire()
                try:
                    deadline.reschedule(self._loop_time() + DB_TIMEOUT_S + QUERY_GRACE_S)
                    return await operation(connection, *args)
                except BaseException as exc:
                    _discard_unless_idle(connection, exc)
                    raise
                finally:
                    await self.pool.release(connection)
        except TimeoutError:
            if connection is None:
                raise PoolTimeout() from None
            raise

    async def fetch(self, user_id: int, item_ids: list[int]):
        """(user features or None, item rows); the items query runs only for a known user.
        Both queries on one pooled connection."""
        return await self._on_connection(_user_and_items, user_id, item_ids)

    async def fetch_batch(self, user_ids: list[int], items_for):
        """({user id: features} of the users found, item rows): a batch's two queries on one pooled
        connection, the same deadlines as fetch()."""
        return await self._on_connection(_users_and_items, user_ids, items_for)

    async def check(self) -> str | None:
        """None when the database answers, else the reason."""
        try:
            await self._on_connection(_select_one)
        except UNAVAILABLE as exc:      # PoolTimeout and TimeoutError included
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
