"""Session fixtures shared by every suite: the database and the model artifacts.

`dsn` starts the private cluster if it is not running (and stops it again at the end of the session
in that case), seeds it if needed and returns its URL; with DATABASE_URL set it uses that database
instead. `model_dir` trains and exports the model if the artifacts are missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rankbench import pg
from rankbench.config import ARTIFACTS_DIR, DEFAULT_DSN


@pytest.fixture(scope="session")
def dsn() -> str:
    from seed.data import ensure_seeded

    external = os.environ.get("DATABASE_URL")
    started_here = False
    if not external:
        started_here = pg.running_pid(pg.Cluster()) is None
        pg.up(quiet=True)
    url = external or DEFAULT_DSN
    ensure_seeded(url, quiet=True)
    yield url
    if started_here:
        pg.down(quiet=True)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from seed.model import ensure_model

    ensure_model(ARTIFACTS_DIR, quiet=True)
    return ARTIFACTS_DIR
