"""Issue 7, item 5: SIGTERM under load -> requests already accepted complete, exit 0 within 5 s.

"Accepted" is made certain rather than guessed: `items` is locked (ACCESS EXCLUSIVE) so that the
first request of every client blocks inside the server, in the database or waiting for a pool
connection, until pg_stat_activity shows backends waiting on the lock. Then SIGTERM, and the lock
is released a moment later. Every request sent before SIGTERM must get a complete 200; requests
sent after it may be answered (200) or refused/closed, but never get a 5xx or a torn answer; the
whole process tree must exit with status 0 within SHUTDOWN_BOUND_S of the signal.
"""
from __future__ import annotations

import signal
import threading
import time

import psutil

from rankbench.servers import SERVERS

from . import record, servers
from .cluster import TableLock, lock_waiters
from .corpus import VALID_REQUEST
from .profile import HANG_S, SHUTDOWN_BOUND_S, STATEMENT_TIMEOUT_S
from .rawhttp import Connection

CLIENTS = 12
WORKERS = 2
RELEASE_AFTER_S = 0.3


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Client(threading.Thread):
    """Sends valid requests one after the other on one connection until told to stop."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.results: list[tuple[float, str, bytes]] = []   # (sent at, label, raw excerpt)
        self.halt = threading.Event()
        self.first_sent = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = Connection(self.host, self.port, timeout=HANG_S)
                sent = time.monotonic()
                ok = conn.send(VALID_REQUEST)
                self.first_sent.set()
                answer = conn.read_response()
                label = answer.label if ok or answer.outcome == "response" else "reset"
                self.results.append((sent, label, answer.raw[:200]))
                if answer.outcome != "response" or answer.keep_alive is False:
                    conn.close()
                    conn = None
            except OSError as exc:
                self.first_sent.set()
                self.results.append((time.monotonic(), f"refused ({type(exc).__name__})", b""))
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()


def test_sigterm_under_load(checked_server_name, fault_db, db):
    name = checked_server_name
    timeout_s = STATEMENT_TIMEOUT_S[SERVERS[name].language]
    server = servers.start(name, db.url, workers=WORKERS)
    tree = servers.tree(server.process.pid)
    clients = [Client(server.host, server.port) for _ in range(CLIENTS)]
    try:
        with TableLock(db.url, "items"):
            for client in clients:
                client.start()
            for client in clients:
                client.first_sent.wait(5)
            deadline = time.monotonic() + timeout_s / 2
            waiting = 0
            while time.monotonic() < deadline:
                waiting = lock_waiters(db.url)
                if waiting >= min(CLIENTS, 8) // 2:
                    break
                time.sleep(0.02)
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            time.sleep(RELEASE_AFTER_S)
        try:
            code = server.process.wait(SHUTDOWN_BOUND_S + 10)
        except Exception:
            code = None
        exited_after = time.monotonic() - sigterm_at
    finally:
        for client in clients:
            client.halt.set()
        for client in clients:
            if client.ident is not None:      # started
                client.join(HANG_S + 5)
        if server.process.poll() is None:
            server.stop()
    leftovers = [p.pid for p in tree if _alive(p)]
    before = [r for c in clients for r in c.results if r[0] < sigterm_at]
    after = [r for c in clients for r in c.results if r[0] >= sigterm_at]
    accepted_bad = [(label, raw) for _, label, raw in before if label != "200"]
    after_bad = [(label, raw) for _, label, raw in after
                 if label not in ("200", "503", "closed", "reset") and not label.startswith("refused")]
    figures = {"workers": WORKERS, "clients": CLIENTS, "lock_waiters_at_sigterm": waiting,
               "accepted_before_sigterm": len(before),
               "accepted_answered_200": len(before) - len(accepted_bad),
               "after_sigterm": sorted({r[1] for r in after}),
               "exit_code": code, "exit_after_s": round(exited_after, 2), "leftover_pids": leftovers}
    record.record("shutdown", server=name, **figures)
    assert waiting > 0, f"{name}: no request was blocked in the database before SIGTERM: {figures}"
    assert not accepted_bad, (f"{name}: requests accepted before SIGTERM did not complete: "
                              f"{accepted_bad[:5]}; {figures}")
    assert not after_bad, f"{name}: bad answers after SIGTERM: {after_bad[:5]}; {figures}"
    assert code == 0, f"{name}: exit status {code} after SIGTERM (expected 0): {figures}\n" \
                      f"{server.stderr_tail()}"
    assert exited_after <= SHUTDOWN_BOUND_S, f"{name}: took {exited_after:.1f} s to exit: {figures}"
    assert not leftovers, f"{name}: processes left after exit: {leftovers}"
