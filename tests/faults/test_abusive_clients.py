"""Issue 7, item 3: abusive clients.

- slowloris: connections that trickle a request head forever, reopened as soon as the server drops
  them, while a normal client sends valid requests: every normal request is answered 200 within
  NORMAL_CLIENT_BOUND_S, and every slow connection is cut by the server within
  HEADER_TIMEOUT_BOUND_S of its opening;
- idle connections (nothing sent; idle after a response; stalled in the middle of a body) are
  closed by the server within IDLE_TIMEOUT_BOUND_S. They are opened by the first test of this
  module for a server, and conftest.py moves the check to the end of that server's tests, so that
  the wait (a minute for a 60 s keep-alive timeout) overlaps the rest of the suite;
- many concurrent connections, each with a request in flight at once: all answered 200;
- requests aborted in the middle of the request and in the middle of the response: afterwards the
  server holds no client socket more than before, its file descriptors and RSS are back to their
  level before, it logged no unhandled error, and it serves.
"""
from __future__ import annotations

import asyncio
import selectors
import socket
import statistics
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from . import record, servers
from .conftest import assert_serves, log_size, new_log_trouble
from .corpus import VALID_REQUEST
from .profile import (HANG_S, HEADER_TIMEOUT_BOUND_S, IDLE_TIMEOUT_BOUND_S,
                      NORMAL_CLIENT_BOUND_S)
from .rawhttp import Connection, post_rank

SETTLE_S = 15.0      # how long lingering closes may take before descriptors are counted


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# -- idle connections (module-wide) -----------------------------------------------------------------
class IdleWatch:
    """Connections that go quiet in three ways; a thread notes when the server closes each."""

    KINDS = ("no_request", "after_response", "mid_body")

    def __init__(self, host: str, port: int) -> None:
        self.opened = time.monotonic()
        self.closed_after: dict[str, float | None] = {kind: None for kind in self.KINDS}
        self.conns: dict[str, Connection] = {}
        for kind in self.KINDS:
            conn = Connection(host, port, timeout=HANG_S)
            if kind == "after_response":
                conn.send(VALID_REQUEST)
                answer = conn.read_response()
                assert answer.label == "200", f"idle watch: valid request got {answer.label}"
            elif kind == "mid_body":
                conn.send(post_rank(b'{"user_id": 7, "item_ids": [12]}')[:-10])
            self.conns[kind] = conn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        selector = selectors.DefaultSelector()
        for kind, conn in self.conns.items():
            selector.register(conn.sock, selectors.EVENT_READ, kind)
        pending = set(self.conns)
        while pending and not self._stop.is_set():
            for key, _ in selector.select(timeout=0.2):
                kind = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:       # FIN or RST: closed by the server (a 408 before it is fine)
                    self.closed_after[kind] = time.monotonic() - self.opened
                    selector.unregister(key.fileobj)
                    pending.discard(kind)
        selector.close()

    def wait(self, bound_s: float) -> None:
        self._thread.join(max(0.0, self.opened + bound_s - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.conns.values():
            conn.close()


@pytest.fixture(scope="session")
def idle_watch(server):
    watch = IdleWatch(server.host, server.port)
    yield watch
    watch.close()


# -- slowloris --------------------------------------------------------------------------------------
class Slowloris(threading.Thread):
    """Holds `count` connections that send one more header line per second and never finish."""

    def __init__(self, host: str, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.count = host, port, count
        self.reopen = True
        self.stop_now = False
        self.live: dict[socket.socket, float] = {}
        self.lifetimes: list[float] = []     # seconds from open to the server's close
        self.survivors = 0                   # still open HEADER_TIMEOUT_BOUND_S after opening
        self.opened = 0
        self.open_errors = 0
        self.ready = threading.Event()

    def _open(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=2)
            sock.sendall(b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
            sock.setblocking(False)
        except OSError:
            self.open_errors += 1
            return
        self.live[sock] = time.monotonic()
        self.opened += 1

    def _closed_by_server(self, sock: socket.socket) -> bool:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:                  # an answer (408/400/431) before the close: read on
            try:
                while sock.recv(65536):
                    pass
            except BlockingIOError:
                return False
            except OSError:
                pass
        return True

    def run(self) -> None:
        tick = 0
        while not self.stop_now:
            if self.reopen:
                while len(self.live) < self.count and not self.stop_now:
                    self._open()
                    if self.open_errors > self.count:
                        break
                self.ready.set()
            now = time.monotonic()
            for sock, opened in list(self.live.items()):
                gone = self._closed_by_server(sock)
                if not gone:
                    try:
                        sock.send(b"X-Slow-%d: %d\r\n" % (tick, tick))
                    except BlockingIOError:
                        pass
                    except OSError:
                        gone = True
                if gone:
                    self.lifetimes.append(now - opened)
                    del self.live[sock]
                    sock.close()
                elif now - opened > HEADER_TIMEOUT_BOUND_S:
                    self.survivors += 1
                    del self.live[sock]
                    sock.close()
            if not self.reopen and not self.live:
                break
            tick += 1
            time.sleep(1.0)
        for sock in self.live:
            sock.close()


def _timed_request(host: str, port: int, conn: Connection | None) -> tuple[float, str, Connection | None]:
    started = time.monotonic()
    try:
        if conn is None:
            conn = Connection(host, port, timeout=HANG_S)
        conn.send(VALID_REQUEST)
        answer = conn.read_response()
        label = answer.label
    except OSError as exc:
        label = f"error {exc}"
    return time.monotonic() - started, label, conn


def test_slowloris(server_name, server, fault_profile, idle_watch):
    host, port = server.host, server.port

    def normal_client(seconds: float, count: int | None = None) -> list[tuple[float, str]]:
        results, keep, deadline, index = [], None, time.monotonic() + seconds, 0
        while time.monotonic() < deadline and (count is None or index < count):
            # Alternate a fresh connection and a kept-alive one.
            reuse = keep if index % 2 else None
            latency, label, conn = _timed_request(host, port, reuse)
            if reuse is None and conn is not None:
                if keep is not None:
                    keep.close()
                keep = conn
            results.append((latency, label))
            index += 1
            time.sleep(0.02)
        if keep is not None:
            keep.close()
        return results

    before = normal_client(30.0, count=30)
    attack = Slowloris(host, port, fault_profile.slowloris_connections)
    attack.start()
    assert attack.ready.wait(30), "could not open the slow connections"
    during = normal_client(fault_profile.slowloris_duration_s)
    held_at_end = len(attack.live)
    attack.reopen = False
    attack.join(HEADER_TIMEOUT_BOUND_S + 5)
    attack.stop_now = True

    slow = [f"{label} after {latency:.2f} s" for latency, label in during
            if label != "200" or latency > NORMAL_CLIENT_BOUND_S]
    lat_before = sorted(latency for latency, _ in before)
    lat_during = sorted(latency for latency, _ in during)
    figures = {
        "slow_connections": fault_profile.slowloris_connections, "opened": attack.opened,
        "held_at_end": held_at_end, "open_errors": attack.open_errors,
        "normal_requests": len(during), "normal_failures": len(slow),
        "normal_p50_ms_before": round(statistics.median(lat_before) * 1000, 2),
        "normal_max_ms_before": round(lat_before[-1] * 1000, 2),
        "normal_p50_ms_during": round(statistics.median(lat_during) * 1000, 2) if lat_during else None,
        "normal_max_ms_during": round(lat_during[-1] * 1000, 2) if lat_during else None,
        "server_cut_after_s_median": round(statistics.median(attack.lifetimes), 2)
        if attack.lifetimes else None,
        "server_cut_after_s_max": round(max(attack.lifetimes), 2) if attack.lifetimes else None,
        "survivors": attack.survivors}
    record.record("slowloris", server=server_name, **figures)
    assert not slow, (f"{server_name}: under {fault_profile.slowloris_connections} slow-header "
                      f"connections, {len(slow)} of {len(during)} normal requests failed or took "
                      f"over {NORMAL_CLIENT_BOUND_S} s: {slow[:5]}; {figures}")
    assert held_at_end > 0 or attack.lifetimes, "the attack held no connection at all"
    assert attack.survivors == 0, (f"{server_name}: {attack.survivors} slow-header connections "
                                   f"were still open {HEADER_TIMEOUT_BOUND_S:.0f} s after they "
                                   f"opened (no request-head timeout); {figures}")
    assert_serves(server, "after the slowloris attack")


# -- many concurrent connections --------------------------------------------------------------------
async def _concurrent(host: str, port: int, count: int) -> list[str]:
    connected = asyncio.Event()
    go = asyncio.Event()
    opened = 0

    async def one() -> str:
        nonlocal opened
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            opened += 1
            if opened == count:
                connected.set()
            return f"connect error {exc.errno}"
        opened += 1
        if opened == count:
            connected.set()
        try:
            await go.wait()
            writer.write(VALID_REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            if status == "200" and b'"items"' not in body:
                return "200 without items"
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            return type(exc).__name__
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    await asyncio.wait_for(connected.wait(), 60)
    go.set()
    return await asyncio.wait_for(asyncio.gather(*tasks), 120)


def test_concurrent_connections(server_name, server, fault_profile, idle_watch):
    count = fault_profile.concurrent_connections
    pid = server.process.pid
    sockets_before = servers.tree_client_sockets(pid, server.port)
    started = time.monotonic()
    labels = asyncio.run(_concurrent(server.host, server.port, count))
    elapsed = time.monotonic() - started
    bad = [label for label in labels if label != "200"]
    deadline = time.monotonic() + SETTLE_S
    while servers.tree_client_sockets(pid, server.port) > sockets_before and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    sockets_after = servers.tree_client_sockets(pid, server.port)
    record.record("concurrent", server=server_name, connections=count, ok=count - len(bad),
                  failures=sorted(set(bad))[:5], seconds=round(elapsed, 2),
                  client_sockets_before=sockets_before, client_sockets_after=sockets_after)
    assert not bad, (f"{server_name}: {len(bad)} of {count} concurrent connections did not get "
                     f"200: {sorted(set(bad))[:5]}")
    assert sockets_after <= sockets_before, (
        f"{server_name}: holds {sockets_after} client sockets {SETTLE_S:.0f} s after the "
        f"{count} clients closed, {sockets_before} before")
    assert_serves(server, f"after {count} concurrent connections")


# -- aborted requests -------------------------------------------------------------------------------
_BIG = post_rank(orjson.dumps({"user_id": 11, "item_ids": list(range(1, 201)), "top_k": 200}))


def _abort(host: str, port: int, index: int) -> None:
    """One aborted exchange; even indices abort mid-request, odd ones mid-response."""
    try:
        sock = socket.create_connection((host, port), timeout=HANG_S)
    except OSError:
        return
    try:
        variant = (index // 2) % 4 if index % 2 == 0 else (index // 2) % 3
        if index % 2 == 0:
            if variant == 0:
                sock.sendall(b"POST /ra")
            elif variant == 1:
                sock.sendall(b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            elif variant == 2:
                sock.sendall(_BIG[:len(_BIG) - 30])
            else:
                sock.sendall(b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n40\r\n{\"user_id\": 7, ")
            if variant in (1, 3):
                sock.close()          # FIN
                return
        else:
            sock.sendall(_BIG * (4 if variant == 2 else 1))
            if variant >= 1:
                sock.recv(1 + index % 100)   # the response has begun
        _rst(sock)
    except OSError:
        sock.close()


def test_aborted_requests(server_name, server, fault_profile, idle_watch):
    total = fault_profile.aborted_requests
    pid, host, port = server.process.pid, server.host, server.port
    offset = log_size(server)
    # Warm-up: every abort kind, and enough concurrent valid requests to open the whole pool.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _abort(host, port, i), range(max(100, total // 10))))
        warm = list(pool.map(lambda i: _timed_request(host, port, None), range(200)))
    for _, _, conn in warm:
        if conn is not None:
            conn.close()
    time.sleep(3.0)   # lingering closes of the warm-up
    fds_before = servers.tree_fds(pid)
    rss_before = servers.tree_rss_mb(pid)
    sockets_before = servers.tree_client_sockets(pid, port)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: _abort(host, port, i), range(total)))
    abort_s = time.monotonic() - started
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and (
            servers.tree_client_sockets(pid, port) > sockets_before
            or servers.tree_fds(pid) > fds_before):
        time.sleep(0.25)
    fds_after = servers.tree_fds(pid)
    rss_after = servers.tree_rss_mb(pid)
    sockets_after = servers.tree_client_sockets(pid, port)
    trouble = new_log_trouble(server, offset)
    rss_allowed = max(rss_before * 1.05, rss_before + 8.0)
    figures = {"aborted": total, "seconds": round(abort_s, 2), "fds_before": fds_before,
               "fds_after": fds_after, "client_sockets_before": sockets_before,
               "client_sockets_after": sockets_after, "rss_mb_before": round(rss_before, 1),
               "rss_mb_after": round(rss_after, 1), "rss_mb_allowed": round(rss_allowed, 1),
               "stderr_trouble": trouble[:3]}
    record.record("aborted", server=server_name, **figures)
    assert server.process.poll() is None, f"{server_name} died during the aborts: {figures}"
    assert sockets_after <= sockets_before, \
        f"{server_name}: client sockets leaked by aborted requests: {figures}"
    assert fds_after <= fds_before, f"{server_name}: file descriptors not back to their level: {figures}"
    assert rss_after <= rss_allowed, f"{server_name}: RSS not back to its level: {figures}"
    assert not trouble, f"{server_name} logged unhandled errors for aborted requests: {trouble[:5]}"
    assert_serves(server, f"after {total} aborted requests")


# -- run last for each server (conftest.py): the idle connections -------------------------------------------
def test_idle_connections_closed(server_name, server, idle_watch):
    idle_watch.wait(IDLE_TIMEOUT_BOUND_S)
    record.record("idle", server=server_name,
                  closed_after_s={k: (round(v, 1) if v is not None else None)
                                  for k, v in idle_watch.closed_after.items()})
    open_still = [kind for kind, after in idle_watch.closed_after.items() if after is None]
    assert not open_still, (f"{server_name}: idle connections still open "
                            f"{IDLE_TIMEOUT_BOUND_S:.0f} s after they went quiet: {open_still} "
                            f"(closed: {idle_watch.closed_after})")
