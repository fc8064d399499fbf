"""Fixtures of the bench harness tests: the fake contract server on an ephemeral port."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench_testlib import FAKE_SERVER, free_port, wait_healthy


@pytest.fixture
def fake_server():
    """fake_server(*flags) -> port; every server started is stopped at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(*flags: str) -> int:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--port", str(port), *flags],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_healthy(port, proc)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
