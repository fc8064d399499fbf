"""Which servers the fault suite runs, and starting them: the one launcher, tests/servers.py.

What the fault suite adds: extra command-line flags and a command without --host (to test the default
bind), and process-tree figures (RSS, open file descriptors).
Selection: RANKBENCH_SERVERS (comma list of rankbench.servers names). Default: every registered
server whose prerequisites exist. A server named explicitly whose prerequisites are missing fails.
"""
from __future__ import annotations

import sys
from pathlib import Path

import psutil

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import servers as launcher  # noqa: E402  (tests/servers.py)
from servers import RunningServer, free_port, selection  # noqa: E402

from rankbench.servers import SERVERS, ServerSpec  # noqa: E402

__all__ = ["RunningServer", "free_port", "selection", "missing_prerequisites", "start", "tree",
           "tree_rss_mb", "tree_fds"]


def missing_prerequisites(spec: ServerSpec) -> list[str]:
    return [p.describe() for p in spec.missing()]


def start(name: str, dsn: str, *, workers: int = 1, pool_size: int = 8,
          extra: tuple[str, ...] = (), without_host: bool = False,
          wait_for: str = "healthy") -> RunningServer:
    """Start a registered server on a free port (pytest.fail if it does not come up).

    `extra` is appended to the contract's flags; `without_host` leaves --host out so that the
    server's own default bind is used (the health check still goes to 127.0.0.1)."""
    return launcher.start(SERVERS[name], dsn, workers=workers, pool_size=pool_size, extra=extra,
                          without_host=without_host, wait_for=wait_for)


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
