"""Seeding is idempotent and deterministic: checked in a scratch database of the same cluster, so
the tables that servers read are never dropped under them."""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

from seed import data

SAMPLE_IDS = [1, 2, 3, 97, 1000, 54321, 99999, 100000, 150000, 200000]


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def scratch_dsn(dsn):
    name = "rankbench_seed_test"
    asyncio.run(_admin(dsn, f"DROP DATABASE IF EXISTS {name}"))
    asyncio.run(_admin(dsn, f"CREATE DATABASE {name}"))
    parts = urlsplit(dsn)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    asyncio.run(_admin(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def test_seed_is_idempotent_and_deterministic(scratch_dsn):
    first = asyncio.run(data.seed(scratch_dsn, 1, force=False))
    assert first["skipped"] is False
    assert (first["users"], first["items"]) == (200_000, 100_000)
    checksum_1 = asyncio.run(data.sample_checksum(scratch_dsn, SAMPLE_IDS))

    again = asyncio.run(data.seed(scratch_dsn, 1, force=False))
    assert again["skipped"] is True

    forced = asyncio.run(data.seed(scratch_dsn, 1, force=True))
    assert forced["skipped"] is False
    assert asyncio.run(data.sample_checksum(scratch_dsn, SAMPLE_IDS)) == checksum_1


def test_seeded_rows_are_the_generator_rows(dsn):
    """The database holds exactly what the fixed-seed generator draws (float32, contiguous ids)."""
    async def fetch():
        conn = await asyncpg.connect(dsn)
        try:
            users = await conn.fetch("SELECT id, features FROM users WHERE id = ANY($1) ORDER BY id", SAMPLE_IDS)
            items = await conn.fetch("SELECT id, features FROM items WHERE id = ANY($1) ORDER BY id", SAMPLE_IDS)
            bounds = await conn.fetchrow("SELECT (SELECT min(id) FROM users) AS umin, (SELECT max(id) FROM users) AS umax,"
                                         " (SELECT count(*) FROM users) AS ucount,"
                                         " (SELECT min(id) FROM items) AS imin, (SELECT max(id) FROM items) AS imax,"
                                         " (SELECT count(*) FROM items) AS icount")
            return users, items, bounds
        finally:
            await conn.close()

    users, items, bounds = asyncio.run(fetch())
    assert tuple(bounds) == (1, 200_000, 200_000, 1, 100_000, 100_000)
    expected_users = data.features("users", 200_000, 30)
    expected_items = data.features("items", 100_000, 10)
    assert [r["id"] for r in users] == SAMPLE_IDS
    for row in users:
        np.testing.assert_array_equal(np.asarray(row["features"], np.float32), expected_users[row["id"] - 1])
    for row in items:
        np.testing.assert_array_equal(np.asarray(row["features"], np.float32), expected_items[row["id"] - 1])
