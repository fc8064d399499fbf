"""Which servers the fault suite runs, and starting them.

Starting a server is the conformance suite's code (tests/conformance/conformance_servers.py:
`start_server`, `RunningServer`), imported here rather than copied; the lead is asked to move it
to a shared tests/servers.py. What the fault suite adds: its own default selection (every registered
server whose prerequisites exist, Rust included), extra command-line flags and a command without
--host (to test the default bind), and process-tree figures (RSS, open file descriptors).

Selection: RANKBENCH_SERVERS (comma list of rankbench.servers names). Default: every registered
server whose prerequisites exist. A server named explicitly whose prerequisites are missing fails.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import psutil

from rankbench.config import ARTIFACTS_DIR, ROOT
from rankbench.servers import SERVERS, ServerSpec

_CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"
if str(_CONFORMANCE) not in sys.path:
    sys.path.insert(0, str(_CONFORMANCE))

from conformance_servers import RunningServer, free_port, start_server  # noqa: E402

__all__ = ["RunningServer", "free_port", "selection", "missing_prerequisites", "start", "tree",
           "tree_rss_mb", "tree_fds"]


def missing_prerequisites(spec: ServerSpec) -> list[str]:
    missing = [str(p) for p in spec.needs if not Path(p).exists()]
    if spec.language == "python" and not (ROOT / "py_servers" / "__main__.py").exists():
        missing.append(str(ROOT / "py_servers" / "__main__.py"))
    return missing


def selection() -> tuple[list[str], bool]:
    """(server names, named explicitly?)"""
    raw = os.environ.get("RANKBENCH_SERVERS", "").strip()
    if raw:
        return [n.strip() for n in raw.split(",") if n.strip()], True
    return [name for name, spec in SERVERS.items() if not missing_prerequisites(spec)], False


def start(name: str, dsn: str, *, workers: int = 1, pool_size: int = 8,
          extra: tuple[str, ...] = (), without_host: bool = False,
          wait_for: str = "healthy") -> RunningServer:
    """Start a registered server on a free port (pytest.fail if it does not come up).

    `extra` is appended to the contract's flags; `without_host` leaves --host out so that the
    server's own default bind is used (the health check still goes to 127.0.0.1)."""
    spec = SERVERS[name]
    if extra or without_host:
        base = spec.build_command

        def build(common: list[str]) -> list[str]:
            if without_host:
                at = common.index("--host")
                common = common[:at] + common[at + 2:]
            return base(common) + list(extra)

        spec = dataclasses.replace(spec, build_command=build)
    return start_server(spec, workers, dsn, ARTIFACTS_DIR, wait_for=wait_for, pool_size=pool_size)


# -- process figures --------------------------------------------------------------------------------
def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def tree_rss_mb(pid: int) -> float:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def tree_fds(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.num_fds()
        except psutil.Error:
            pass
    return total


def tree_client_sockets(pid: int, port: int) -> int:
    """TCP sockets the server holds for clients of `port` (not its listener, not the database)."""
    total = 0
    for proc in tree(pid):
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        total += sum(1 for c in connections
                     if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN)
    return total


def tree_listen_addresses(pid: int) -> set[str]:
    """IP addresses the server's process tree listens on (TCP)."""
    found = set()
    for proc in tree(pid):
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    return found
