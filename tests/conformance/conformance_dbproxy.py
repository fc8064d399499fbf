"""A TCP proxy between a server and PostgreSQL that a test can break, so database outages are
tested without touching the shared cluster.

- `down()`: every proxied connection is cut and new ones are closed on accept (to the server the
  database is gone); `up()` restores normal forwarding.
- `hold(seconds)`: traffic towards the database is delayed by that long, and `query_seen` is set
  when the server sends something meanwhile: a deterministic way to have a request in flight.
"""
from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit


def dsn_through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def upstream_of(dsn: str) -> tuple[str, int] | None:
    parts = urlsplit(dsn)
    if not parts.hostname or parts.hostname.startswith("/"):
        return None
    return parts.hostname, parts.port or 5432


class DbProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._down = False
        self._delay = 0.0
        self.query_seen = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def dsn(self, dsn: str) -> str:
        return dsn_through(dsn, self.port)

    def down(self) -> None:
        with self._lock:
            self._down = True
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def up(self) -> None:
        with self._lock:
            self._down = False
            self._delay = 0.0

    def hold(self, seconds: float) -> None:
        self.query_seen.clear()
        with self._lock:
            self._delay = seconds

    def close(self) -> None:
        self._closed = True
        self.down()
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_database: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if to_database:
                    with self._lock:
                        delay = self._delay
                    if delay:
                        self.query_seen.set()
                        time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
