"""py_servers/db.py: the pooled-connection block behind fetch() and check(), against a stand-in pool
(deadlines, what happens to a connection after a failure) and against the real database."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from py_servers import db
from py_servers.db import Database, PoolTimeout


class _Connection:
    def __init__(self, user=(0.5,) * 30, hang_s=0.0, error=None):
        self.user, self.hang_s, self.error = user, hang_s, error
        self.queries = []
        self.terminated = False

    async def _run(self, sql, arg):
        self.queries.append((sql, arg))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.error is not None:
            raise self.error

    async def fetchval(self, sql, arg=None):
        await self._run(sql, arg)
        return self.user

    async def fetch(self, sql, arg):
        await self._run(sql, arg)
        return [(i, [0.0] * 10) for i in arg]

    def terminate(self):
        self.terminated = True


class _Pool:
    def __init__(self, connection, wait_s=0.0):
        self.connection, self.wait_s = connection, wait_s
        self.released = []

    async def acquire(self):
        await asyncio.sleep(self.wait_s)
        return self.connection

    async def release(self, connection):
        self.released.append(connection)


def _database(pool) -> Database:
    database = Database("postgresql://unused", 1)
    database.pool = pool
    database._loop_time = asyncio.get_running_loop().time
    return database


@pytest.fixture
def short_deadlines(monkeypatch):
    monkeypatch.setattr(db, "POOL_TIMEOUT_S", 0.05)
    monkeypatch.setattr(db, "DB_TIMEOUT_S", 0.05)
    monkeypatch.setattr(db, "QUERY_GRACE_S", 0.0)


def test_fetch_runs_both_queries_on_one_connection_and_releases_it():
    async def scenario():
        connection = _Connection()
        pool = _Pool(connection)
        user, rows = await _database(pool).fetch(7, [1, 2])
        assert user == (0.5,) * 30 and [r[0] for r in rows] == [1, 2]
        assert connection.queries == [(db.USER_SQL, 7), (db.ITEMS_SQL, [1, 2])]
        assert pool.released == [connection] and not connection.terminated
        connection.user = None                       # unknown user: no items query
        assert await _database(pool).fetch(8, [1]) == (None, None)
        assert connection.queries[-1] == (db.USER_SQL, 8)

    asyncio.run(scenario())


@pytest.mark.parametrize("error,terminated", [
    (ConnectionResetError("reset"), True),           # protocol state unknown: never reused as is
    (asyncpg.QueryCanceledError("statement timeout"), False),   # idle again after the error
])
def test_a_failed_query_releases_and_discards_unless_idle(error, terminated):
    async def scenario():
        connection = _Connection(error=error)
        pool = _Pool(connection)
        with pytest.raises(type(error)):
            await _database(pool).fetch(7, [1])
        assert pool.released == [connection] and connection.terminated is terminated

    asyncio.run(scenario())


def test_pool_wait_and_query_deadlines_are_told_apart(short_deadlines):
    async def scenario():
        slow_pool = _Pool(_Connection(), wait_s=1.0)
        with pytest.raises(PoolTimeout):
            await _database(slow_pool).fetch(7, [1])
        assert slow_pool.released == []
        hung = _Connection(hang_s=1.0)
        pool = _Pool(hung)
        with pytest.raises(TimeoutError) as raised:
            await _database(pool).fetch(7, [1])
        assert not isinstance(raised.value, PoolTimeout)
        assert pool.released == [hung] and hung.terminated
        return (await _database(_Pool(_Connection(), wait_s=1.0)).check(),
                await _database(_Pool(_Connection(hang_s=1.0))).check(),
                await _database(_Pool(_Connection(error=OSError("refused")))).check(),
                await _database(_Pool(_Connection())).check())

    pool_wait, hung, refused, fine = asyncio.run(scenario())
    assert pool_wait == "no pooled connection free within 0.05 s"
    assert hung == "no answer within 0.05 s"
    assert (refused, fine) == ("refused", None)


def test_fetch_and_check_against_the_database(dsn):
    async def scenario():
        database = Database(dsn, 2)
        assert await database.open() is None
        try:
            user, rows = await database.fetch(7, [3, 1, 999_999_999])
            unknown = await database.fetch(0, [1])
            healthy = await database.check()
        finally:
            await database.close(2.0)
        return user, rows, unknown, healthy

    user, rows, unknown, healthy = asyncio.run(scenario())
    assert len(user) == 30
    assert sorted(row[0] for row in rows) == [1, 3] and all(len(row[1]) == 10 for row in rows)
    assert unknown == (None, None) and healthy is None
