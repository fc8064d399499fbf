"""Helpers shared by the bench harness tests (a module name of its own: several test folders have
a conftest.py, and `from conftest import ...` would depend on which one was imported first)."""
from __future__ import annotations

import http.client
import subprocess
import time
from pathlib import Path
from bench.serverproc import free_port

HERE = Path(__file__).parent
FAKE_SERVER = HERE / "bench_fake_server.py"
RUN_WITH_FAKES = HERE / "run_with_fakes.py"


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("fake server did not become healthy")
