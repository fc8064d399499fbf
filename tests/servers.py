"""The one server launcher of the test suites (conformance, faults, bench tests).

Servers come from the registry `rankbench.servers`, so any registered server (Python or Rust, any
variant) runs every suite with no edit here. Selection: RANKBENCH_SERVERS, a comma list of registry
names; default: every registered server whose prerequisites exist. A server named explicitly whose
prerequisites are missing FAILS instead of being skipped. How long a server may take to start and
to stop is a fact of its registry entry (`startup_timeout_s`, `stop_timeout_s`).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rankbench.config import ARTIFACTS_DIR, ROOT
from rankbench.servers import SERVERS, ServerSpec

from bench.serverproc import free_port

HOST = "127.0.0.1"

# The suites' raw HTTP client lives beside the conformance suite.
_CONFORMANCE = Path(__file__).resolve().parent / "conformance"
if str(_CONFORMANCE) not in sys.path:
    sys.path.insert(0, str(_CONFORMANCE))


def selection(registry: dict[str, ServerSpec] | None = None) -> tuple[list[str], bool]:
    """(server names, named explicitly?) from RANKBENCH_SERVERS, else every runnable server."""
    registry = SERVERS if registry is None else registry
    raw = os.environ.get("RANKBENCH_SERVERS", "").strip()
    if raw:
        return [n.strip() for n in raw.split(",") if n.strip()], True
    return [name for name, spec in registry.items() if not spec.missing()], False


def resolve(name: str, explicit: bool, registry: dict[str, ServerSpec] | None = None) -> ServerSpec:
    """The spec, or a failure (named explicitly) / skip (default selection) saying what is missing."""
    registry = SERVERS if registry is None else registry
    spec = registry.get(name)
    if spec is None:
        pytest.fail(f"RANKBENCH_SERVERS names {name!r}, which is not in rankbench.servers "
                    f"(known: {', '.join(registry)})")
    missing = spec.missing()
    if missing:
        message = f"{name}: prerequisites missing: {'; '.join(p.describe() for p in missing)}"
        if explicit:
            pytest.fail(message)
        pytest.skip(message)
    return spec


@dataclass
class RunningServer:
    spec: ServerSpec
    workers: int
    host: str
    port: int
    process: subprocess.Popen
    stderr_path: Path
    command: list[str]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def real_scores(self) -> bool:
        return self.spec.real_scores

    def connect(self, timeout: float = 15.0):
        from conformance_http import Connection

        return Connection(self.host, self.port, timeout)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no stderr)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty stderr)"

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after the registry's stop timeout; the exit code (None if killed)."""
        timeout = self.spec.stop_timeout_s if timeout is None else timeout
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None


def command(spec: ServerSpec, port: int, dsn: str, *, workers: int = 1, pool_size: int = 8,
            model_dir: Path = ARTIFACTS_DIR, extra: tuple[str, ...] = (),
            without_host: bool = False) -> list[str]:
    """The registry's command line; `without_host` leaves --host out (the server's default bind)."""
    argv = spec.command(host=HOST, port=port, dsn=dsn, workers=workers, pool_size=pool_size,
                        model_dir=model_dir, extra=extra)
    if without_host:
        at = argv.index("--host")
        argv = argv[:at] + argv[at + 2:]
    return argv


def start(spec: ServerSpec, dsn: str, *, workers: int = 1, pool_size: int = 8,
          model_dir: Path = ARTIFACTS_DIR, extra: tuple[str, ...] = (), without_host: bool = False,
          wait_for: str = "healthy") -> RunningServer:
    """Start `spec` on a free port and wait. wait_for="healthy": until GET /health is 200;
    "answering": until /health answers at all (a server whose database is down)."""
    port = free_port()
    argv = command(spec, port, dsn, workers=workers, pool_size=pool_size, model_dir=model_dir,
                   extra=extra, without_host=without_host)
    log = tempfile.NamedTemporaryFile(prefix=f"{spec.name}-", suffix=".stderr", delete=False)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                               start_new_session=True, cwd=ROOT)
    log.close()
    server = RunningServer(spec, workers, HOST, port, process, Path(log.name), argv)
    deadline = time.monotonic() + spec.startup_timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{spec.name} --workers {workers} exited with {process.returncode} "
                        f"during startup:\n{server.stderr_tail()}")
        try:
            with server.connect(timeout=5) as conn:
                response = conn.request("GET", "/health")
            if response.status == 200 or wait_for == "answering":
                return server
            last = f"{response.status} {response.body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"{spec.name} --workers {workers}: /health not ready within "
                f"{spec.startup_timeout_s:.0f} s (last: {last}); command: {' '.join(argv)}\n"
                f"stderr:\n{server.stderr_tail()}")


def renamed(spec: ServerSpec, **changes) -> ServerSpec:
    return dataclasses.replace(spec, **changes)


__all__ = ["HOST", "RunningServer", "command", "free_port", "renamed", "resolve", "selection",
           "start"]
