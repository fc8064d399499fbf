"""A raw-socket HTTP/1.1 client for sending bytes no well-behaved client would send.

Requests are written byte for byte; responses are parsed with httptools' response parser (llhttp),
so that a malformed answer is noticed instead of papered over. Every read has a deadline: a server
that does not answer is reported as `timeout` (a hang), never waited for forever.

Outcomes of `read_response`:
  response  a complete HTTP response (1xx interim responses are collected in `interim`)
  closed    the server closed the connection before a complete response (FIN)
  reset     the connection was reset (RST) before a complete response
  timeout   nothing complete arrived before the deadline
  garbled   the bytes received are not a valid HTTP response
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import httptools

from .profile import HANG_S


@dataclass
class Response:
    outcome: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""
    interim: list[int] = field(default_factory=list)
    keep_alive: bool | None = None
    elapsed_s: float = 0.0

    @property
    def label(self) -> str:
        """`400`, or the outcome when there is no status (`closed`, `reset`, ...)."""
        return str(self.status) if self.outcome == "response" else self.outcome

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _Message:
    __slots__ = ("status", "headers", "body", "headers_done", "framed")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_done = False
        self.framed = False     # Content-Length or chunked: the end is known without EOF


class Connection:
    """One TCP connection to a server under test."""

    def __init__(self, host: str, port: int, timeout: float = HANG_S) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._parser = httptools.HttpResponseParser(self)
        self._current: _Message | None = None
        self._done: list[_Message] = []
        self._keep_alive: list[bool] = []
        self._raw = bytearray()
        self._eof = False
        self._error: str | None = None
        self._last_name = b""

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._current = _Message()

    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self._current.headers[key] = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self._current.framed = True

    def on_headers_complete(self) -> None:
        self._current.status = self._parser.get_status_code()
        self._current.headers_done = True

    def on_body(self, body: bytes) -> None:
        self._current.body.append(body)

    def on_message_complete(self) -> None:
        message = self._current
        self._current = None
        self._done.append(message)
        self._keep_alive.append(self._parser.should_keep_alive())

    # -- sending ----------------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Write all of `data`; False if the server has already closed or reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False
        except socket.timeout:
            return False

    def half_close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, reset: bool = False) -> None:
        """Close; `reset=True` sends an RST instead of a FIN (SO_LINGER with a zero timeout)."""
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.sock.close()

    # -- receiving --------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._raw += data
        if self._error is None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            except httptools.HttpParserError as exc:
                self._error = str(exc) or type(exc).__name__

    def _receive(self, deadline: float) -> str | None:
        """Read once. None when data arrived, else the reason reading stopped."""
        if self._eof:
            return "closed"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return "timeout"
        except ConnectionResetError:
            self._eof = True
            return "reset"
        except OSError:
            self._eof = True
            return "reset"
        if not data:
            self._eof = True
            return "closed"
        self._feed(data)
        return None

    def read_response(self, timeout: float | None = None) -> Response:
        """The next final (non-1xx) response on this connection."""
        started = time.monotonic()
        deadline = started + (self.timeout if timeout is None else timeout)
        interim: list[int] = []
        raw_start = 0
        while True:
            while self._done:
                message = self._done.pop(0)
                keep_alive = self._keep_alive.pop(0)
                if message.status is not None and 100 <= message.status < 200:
                    interim.append(message.status)
                    continue
                raw = bytes(self._raw[raw_start:])
                self._raw.clear()
                return Response("response", message.status, message.headers,
                                b"".join(message.body), raw, interim, keep_alive,
                                time.monotonic() - started)
            if self._error is not None:
                return Response("garbled", raw=bytes(self._raw), interim=interim,
                                elapsed_s=time.monotonic() - started)
            stop = self._receive(deadline)
            if stop is None:
                continue
            current = self._current
            if stop == "closed" and current is not None and current.headers_done \
                    and not current.framed:
                # A close-delimited body: legal HTTP/1.1, complete at EOF.
                self._current = None
                raw = bytes(self._raw)
                self._raw.clear()
                return Response("response", current.status, current.headers,
                                b"".join(current.body), raw, interim, False,
                                time.monotonic() - started)
            return Response(stop, raw=bytes(self._raw), interim=interim,
                            elapsed_s=time.monotonic() - started)

    def wait_closed(self, timeout: float) -> str:
        """Wait until the server closes the connection: `closed`, `reset`, `timeout`, or `data`
        if the server sent something instead."""
        deadline = time.monotonic() + timeout
        before = len(self._raw)
        while True:
            stop = self._receive(deadline)
            if stop is not None:
                return stop
            if len(self._raw) > before and not self._eof:
                # Bytes (e.g. a 408 response) are fine; keep waiting for the close itself.
                before = len(self._raw)

    @property
    def received(self) -> bytes:
        return bytes(self._raw)


def exchange(host: str, port: int, request: bytes, *, half_close: bool = False,
             timeout: float = HANG_S) -> Response:
    """Send `request` on a new connection and read one response."""
    try:
        conn = Connection(host, port, timeout)
    except OSError as exc:
        return Response("refused", raw=str(exc).encode())
    try:
        sent = conn.send(request)
        if half_close:
            conn.half_close()
        response = conn.read_response()
        if not sent and response.outcome != "response":
            response.outcome = "reset"
        return response
    finally:
        conn.close()


# -- building requests ------------------------------------------------------------------------------
HOST_HEADER = b"Host: 127.0.0.1\r\n"


def request(method: bytes, path: bytes, body: bytes | None = None, *,
            headers: tuple[bytes, ...] = (), version: bytes = b"HTTP/1.1",
            content_length: bool = True, host: bool = True) -> bytes:
    """A request with exactly the given parts; Content-Length is added for a body unless told not."""
    head = [method + b" " + path + b" " + version + b"\r\n"]
    if host:
        head.append(HOST_HEADER)
    head += [h + b"\r\n" for h in headers]
    if body is not None and content_length:
        head.append(b"Content-Length: %d\r\n" % len(body))
    return b"".join(head) + b"\r\n" + (body or b"")


def post_rank(body: bytes, *, headers: tuple[bytes, ...] = ()) -> bytes:
    return request(b"POST", b"/rank", body,
                   headers=(b"Content-Type: application/json",) + headers)


def chunked(*parts: bytes) -> bytes:
    """A well-formed chunked body made of `parts`, with its terminating zero chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
