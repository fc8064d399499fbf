"""Fixtures of the open-loop tests: the bench tests' fake contract server (the one launcher:
tests/bench/conftest.py's `fake_server`, loaded from there) and the generator, which must be
installed."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_TESTS = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH_TESTS))  # bench_testlib, run_with_fakes

from bench import openloop  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_tests_conftest", BENCH_TESTS / "conftest.py")
_bench_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_conftest)
fake_server = _bench_conftest.fake_server


@pytest.fixture(scope="session")
def oha() -> Path:
    """The pinned generator; installed by scripts/install_loadgen.sh when missing (as `dsn` starts
    the cluster and `model_dir` trains the model), a failure with its message otherwise."""
    if openloop.find() is None:
        script = Path(__file__).resolve().parents[2] / "scripts" / "install_loadgen.sh"
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        if done.returncode != 0 or openloop.find() is None:
            pytest.fail(f"{openloop.INSTALL_HINT}\n{done.stderr.strip()}")
    return openloop.find()
