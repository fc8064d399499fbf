"""Fixtures of the py-candle tests: the rankbench_candle extension and a model loaded from it."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rc():
    """The extension module; a test that needs it fails (not skips) when it is not installed."""
    try:
        import rankbench_candle
    except ImportError as exc:
        pytest.fail(f"rankbench_candle is not installed ({exc}): run `make build` "
                    f"(or candle_server/pyext/install.sh)", pytrace=False)
    return rankbench_candle


@pytest.fixture(scope="session")
def model(rc, model_dir):
    return rc.RankNet(model_dir)
