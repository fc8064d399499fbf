"""Server processes of a bench run: start one from the registry, wait for /health, stop it.

Each server runs in its own process group (procs.Supervisor), with stdout and stderr in log files of
the results folder. How long a server may take to start and to stop comes from its registry entry.
"""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from rankbench.servers import ServerSpec

from bench.procs import Supervisor, tail
from bench.sampler import process_tree

HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """A failure that stops the run: names the server and the phase, and points at its stderr."""

    def __init__(self, message: str, server: str | None = None, phase: str | None = None,
                 log: Path | None = None):
        super().__init__(message)
        self.server = server
        self.phase = phase
        self.log = log

    def describe(self) -> list[str]:
        if self.server and self.phase:
            head = f"bench: {self.server} failed in {self.phase}: "
        elif self.server or self.phase:
            head = f"bench: {self.server or self.phase}: "
        else:
            head = "bench: "
        lines = [head + str(self)]
        last = tail(self.log)
        if last:
            lines.append(f"  last lines of {self.log}:")
            lines += [f"    {line}" for line in last]
        return lines


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice). The one copy: the test
    launcher (tests/servers.py) uses it too."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def http_call(port: int, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def listeners(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}


@dataclass
class RunningServer:
    name: str
    spec: ServerSpec
    proc: subprocess.Popen
    port: int
    stdout: Path
    stderr: Path
    startup_s: float = 0.0
    health: dict | None = None


def choose_port(spec: ServerSpec) -> int:
    return spec.default_port if port_is_free(spec.default_port) else free_port()


def start(supervisor: Supervisor, spec: ServerSpec, argv: list[str], port: int, logs: Path,
          tag: str, phase: str, cwd: Path) -> RunningServer:
    stdout = logs / f"{tag}.stdout.log"
    stderr = logs / f"{tag}.stderr.log"
    t0 = time.monotonic()
    try:
        proc = supervisor.start(argv, spec.name, stdout, stderr, cwd=cwd)
    except OSError as exc:
        raise BenchError(f"cannot start {argv[0]}: {exc}", spec.name, phase, stderr) from None
    server = RunningServer(spec.name, spec, proc, port, stdout, stderr)
    deadline = t0 + spec.startup_timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise BenchError(f"exited with code {code} before /health answered", spec.name,
                             f"{phase}: start", stderr)
        try:
            status, body = http_call(port, "GET", "/health", timeout=1.0)
            if status == 200:
                server.health = json.loads(body)
                break
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"/health did not answer 200 within {spec.startup_timeout_s:.0f} s "
                             f"(the registry's startup timeout)", spec.name, f"{phase}: start",
                             stderr)
        time.sleep(0.05)
    server.startup_s = time.monotonic() - t0
    supervisor.remember_tree(proc)
    tree = {p.pid for p in process_tree(proc.pid)}
    foreign = listeners(port) - tree
    if foreign:
        raise BenchError(f"port {port} is also served by pid(s) {sorted(foreign)}, which the "
                         f"harness did not start; stop them first", spec.name, f"{phase}: start",
                         stderr)
    if server.health.get("server") != spec.name:
        raise BenchError(f"/health names the server {server.health.get('server')!r}, the registry "
                         f"{spec.name!r} (was --server-name passed on?)", spec.name,
                         f"{phase}: start", stderr)
    return server


def stop(supervisor: Supervisor, server: RunningServer) -> tuple[int | None, float]:
    t0 = time.monotonic()
    code = supervisor.stop(server.proc, grace_s=server.spec.stop_timeout_s)
    return code, time.monotonic() - t0
