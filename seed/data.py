"""Deterministic data: `python -m seed.data [--force]`.

users(id 1..200000*SCALE, 30 float32) and items(id 1..100000*SCALE, 10 float32), drawn from one
fixed seed with numpy's PCG64, so two machines seed identical tables. Rows are bulk-loaded with
binary COPY into fresh tables inside one transaction (readers never see half a table), primary
keys are built after the load, and the run ends with VACUUM ANALYZE. A second run finds the
tables already seeded with the same seed and scale and does nothing unless --force is given.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from rankbench.config import (ITEM_FEATURES, ITEMS_PER_SCALE, USER_FEATURES, USERS_PER_SCALE,
                              dsn, scale)

DATA_SEED = 20261129
SCHEMA_SQL = (Path(__file__).parent / "schema.sql").read_text()
DATA_VERSION = "2"  # bump when the generator changes what it writes (2: twin items)

# Twin items: the second id of each pair gets the first's features, so every model scores the two
# exactly alike and the contract's tie rule (score desc, id asc) is exercised with real scores, not
# only on the floors (exact ties never happen otherwise). Ids exist at every SCALE.
TWIN_ITEMS = ((100, 101), (5_000, 5_001), (42_000, 42_007), (99_990, 99_991))


def features(kind: str, count: int, width: int) -> np.ndarray:
    """Rows of float32 features for `kind` ('users' or 'items'), identical on every machine.

    Each table has its own stream so that SCALE changes row counts without changing earlier rows'
    width; values are standard normal, the distribution the model is trained on (seed.model).
    """
    stream = {"users": 1, "items": 2}[kind]
    rng = np.random.Generator(np.random.PCG64([DATA_SEED, stream]))
    rows = rng.standard_normal((count, width), dtype=np.float32)
    if kind == "items":
        for original, twin in TWIN_ITEMS:
            if twin <= count:
                rows[twin - 1] = rows[original - 1]
    return rows


def expected_meta(scale_factor: int) -> dict[str, str]:
    return {"seed": str(DATA_SEED), "scale": str(scale_factor), "version": DATA_VERSION,
            "users": str(USERS_PER_SCALE * scale_factor), "items": str(ITEMS_PER_SCALE * scale_factor)}


async def current_meta(conn) -> dict[str, str]:
    exists = await conn.fetchval("SELECT to_regclass('rankbench_meta') IS NOT NULL")
    if not exists:
        return {}
    return {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM rankbench_meta")}


async def seed(database_url: str, scale_factor: int, force: bool) -> dict[str, float | int | bool]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        meta = expected_meta(scale_factor)
        if not force and await current_meta(conn) == meta:
            return {"skipped": True, "users": int(meta["users"]), "items": int(meta["items"])}
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute("DROP TABLE IF EXISTS users, items, rankbench_meta")
            # Primary keys are added after the load: building an index once is faster than
            # maintaining it row by row.
            await conn.execute(SCHEMA_SQL.replace(" PRIMARY KEY, features", ", features"))
            for table, count, width in (("users", USERS_PER_SCALE * scale_factor, USER_FEATURES),
                                        ("items", ITEMS_PER_SCALE * scale_factor, ITEM_FEATURES)):
                rows = features(table, count, width).tolist()
                records = zip(range(1, count + 1), rows)
                await conn.copy_records_to_table(table, records=records, columns=["id", "features"])
                await conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
            await conn.executemany("INSERT INTO rankbench_meta (key, value) VALUES ($1, $2)",
                                   list(meta.items()))
        await conn.execute("VACUUM ANALYZE users")
        await conn.execute("VACUUM ANALYZE items")
        await conn.execute("VACUUM ANALYZE rankbench_meta")
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("users", "items")}
        return {"skipped": False, **counts, "seconds": time.perf_counter() - started}
    finally:
        await conn.close()


async def sample_checksum(database_url: str, ids: list[int]) -> str:
    """sha256 over the features of the given user and item ids: two seeds must agree."""
    import hashlib

    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        digest = hashlib.sha256()
        for table in ("users", "items"):
            rows = await conn.fetch(f"SELECT id, features FROM {table} WHERE id = ANY($1) ORDER BY id", ids)
            for row in rows:
                digest.update(np.asarray(row["features"], dtype=np.float32).tobytes())
                digest.update(int(row["id"]).to_bytes(8, "little"))
        return digest.hexdigest()
    finally:
        await conn.close()


def ensure_seeded(database_url: str | None = None, force: bool = False, quiet: bool = False) -> dict:
    result = asyncio.run(seed(database_url or dsn(), scale(), force))
    if not quiet:
        if result["skipped"]:
            print(f"seed: already seeded ({result['users']} users, {result['items']} items); "
                  "use FORCE=1 to reseed")
        else:
            print(f"seed: {result['users']} users, {result['items']} items loaded with COPY "
                  f"in {result['seconds']:.1f} s (incl. primary keys and VACUUM ANALYZE)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seed.data", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reseed even if the tables look right")
    args = parser.parse_args(argv)
    try:
        ensure_seeded(force=args.force)
    except (OSError, ConnectionError) as exc:
        print(f"seed: cannot reach the database at {dsn()}: {exc} (run `make db-up`)", file=sys.stderr)
        return 1
    except Exception as exc:  # asyncpg errors carry a clear message; no traceback for users
        print(f"seed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
