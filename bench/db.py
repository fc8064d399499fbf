"""The few database questions the harness asks, as plain functions (asyncpg under asyncio.run)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.pgbench import normalise_sql


class DatabaseError(RuntimeError):
    pass


@dataclass(frozen=True)
class IdRange:
    min: int
    max: int
    count: int

    @property
    def contiguous(self) -> bool:
        return self.max - self.min + 1 == self.count


@dataclass(frozen=True)
class DbFacts:
    server_version: str
    users: IdRange
    items: IdRange


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and result files."""
    parts = urlsplit(dsn)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return dsn


def db_port(dsn: str) -> int:
    return urlsplit(dsn).port or 5432


def db_host(dsn: str) -> str:
    return urlsplit(dsn).hostname or "localhost"


def _run(coro):
    return asyncio.run(coro)


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=5)


def facts(dsn: str) -> DbFacts:
    """Server version and the seeded id ranges, or DatabaseError naming the make target to run."""
    async def go() -> DbFacts:
        try:
            conn = await _connect(dsn)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise DatabaseError(f"database {redact(dsn)} is not reachable ({type(exc).__name__}: "
                                f"{str(exc) or 'no answer'}); run `make db-up`") from None
        try:
            version = await conn.fetchval("SHOW server_version")
            ranges = {}
            for table in ("users", "items"):
                try:
                    row = await conn.fetchrow(f"SELECT min(id), max(id), count(*) FROM {table}")
                except asyncpg.UndefinedTableError:
                    raise DatabaseError(f"table {table} does not exist; run `make seed`") from None
                if not row or row[2] == 0:
                    raise DatabaseError(f"table {table} is empty; run `make seed`")
                ranges[table] = IdRange(int(row[0]), int(row[1]), int(row[2]))
            return DbFacts(version, ranges["users"], ranges["items"])
        finally:
            await conn.close()
    return _run(go())


def fetch_features(dsn: str, user_ids: list[int], item_ids: list[int]
                   ) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Feature rows for the verify oracle, read in bulk (two queries in all)."""
    async def go():
        try:
            conn = await _connect(dsn)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise DatabaseError(f"database {redact(dsn)} is not reachable ({exc}); run `make db-up`") from None
        try:
            users_stmt = await conn.prepare("SELECT id, features FROM users WHERE id = ANY($1)")
            items_stmt = await conn.prepare("SELECT id, features FROM items WHERE id = ANY($1)")
            users = {r["id"]: list(r["features"]) for r in await users_stmt.fetch(user_ids)}
            items = {r["id"]: list(r["features"]) for r in await items_stmt.fetch(item_ids)}
            return users, items
        finally:
            await conn.close()
    return _run(go())


def statements_of(dsn: str, client_ports: list[int]) -> list[str]:
    """The last statement text of every backend serving the given client ports (pg_stat_activity):
    what a server actually sends, to compare with the ceiling's statements."""
    if not client_ports:
        raise DatabaseError("no database connection of the server was found")

    async def go():
        conn = await _connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT DISTINCT query FROM pg_stat_activity "
                "WHERE client_port = ANY($1::int[]) AND pid <> pg_backend_pid() AND query <> ''",
                client_ports)
            return sorted({normalise_sql(r["query"]) for r in rows})
        finally:
            await conn.close()
    try:
        return _run(go())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        # Not measured is not "no statements": the caller records n/a with this reason.
        raise DatabaseError(f"pg_stat_activity could not be read: {type(exc).__name__}: {exc}") \
            from None
