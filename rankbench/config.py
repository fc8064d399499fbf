"""Paths and defaults shared by every part of rankbench (see docs/contract.md)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
PG_DIR = BENCH_DIR / "pg"
ARTIFACTS_DIR = ROOT / "artifacts"
RESULTS_DIR = ROOT / "results"
CANDLE_DIR = ROOT / "candle_server"
CANDLE_BINARY = CANDLE_DIR / "target" / "release" / "candle_server"
CEILING_BINARY = CANDLE_DIR / "target" / "release" / "rankbench-ceiling"

PG_PORT = 55432
PG_USER = "bench"
PG_DATABASE = "bench"
DEFAULT_DSN = f"postgresql://{PG_USER}@127.0.0.1:{PG_PORT}/{PG_DATABASE}"

# Seeded id ranges at SCALE=1: ids are contiguous 1..N.
USERS_PER_SCALE = 200_000
ITEMS_PER_SCALE = 100_000
USER_FEATURES = 30
ITEM_FEATURES = 10
INPUT_FEATURES = USER_FEATURES + ITEM_FEATURES

# Request limits of the contract.
MAX_ITEMS = 1000
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10
MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


def dsn() -> str:
    """The database every part talks to: DATABASE_URL wins over the private cluster."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DSN


def scale() -> int:
    raw = os.environ.get("SCALE", "1") or "1"
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"SCALE must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"SCALE must be a positive integer, got {raw!r}")
    return value
