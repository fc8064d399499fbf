"""The HTTP/1.1 core shared by every backend: an asyncio.Protocol driven by httptools.

One parser per connection. Each parsed request becomes a `Request` that joins the connection's FIFO
(`pipeline`); the application completes requests in any order, and the connection writes responses
strictly from the head of the FIFO, so pipelined requests are answered in order. Request data lives
on the `Request`, never on the protocol: the protocol only points at the one request being parsed.

Limits (docs/contract.md): request line + headers over 16 KiB -> 431, body over 64 KiB -> 413 (from
Content-Length before the body is read, or while a chunked body accumulates), malformed HTTP -> 400.
A request line without an HTTP version (which llhttp accepts as HTTP/0.9) or any version other than
1.0/1.1 is malformed HTTP (400). The header limit counts raw bytes as well as parsed ones from the first read of a request on, so a header
line that never ends cannot grow the parser's buffer past the limit (see `data_received`).
Those three make the rest of the byte stream unreadable, so the connection is closed after the error
response (a lingering close: shut down our side, discard what the client still sends for a moment,
so that the client reads the response instead of a reset). Every other error keeps the connection.

Draining (after SIGTERM): every response still owed on a connection, and every request completed
from then on, is answered with `Connection: close`, and the connection is closed after its last one.

Optional API key: `ApiKeyProtocol` also keeps the `X-API-Key` header of each request; the plain
`HttpProtocol` (used when no key is configured) does not look at it at all.

Timeouts: a request that has started but is not complete after REQUEST_TIMEOUT_S, or a keep-alive
connection idle for IDLE_TIMEOUT_S, is closed (one sweep per second per worker, not a timer per
request).
"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import traceback
from collections import deque
from email.utils import formatdate

import httptools

from rankbench.config import MAX_BODY_BYTES, MAX_HEADER_BYTES


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {raw!r}")
    return value


REQUEST_TIMEOUT_S = _env_seconds("RANKBENCH_REQUEST_TIMEOUT_S", 5.0)
IDLE_TIMEOUT_S = _env_seconds("RANKBENCH_IDLE_TIMEOUT_S", 60.0)
LINGER_S = 2.0                 # how long a closing connection keeps discarding client data
MAX_PIPELINE = 64              # in-flight requests per connection before we stop reading
RESUME_PIPELINE = 16

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed", 413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}


class HttpReject(Exception):
    """Raised from a parser callback: the request cannot be read further."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _StopParsing(Exception):
    """Raised after a request that ends the connection: later bytes are not parsed."""


class ResponseHead:
    """Prebuilt response prefixes: status line and the headers that never change."""

    def __init__(self, server_name: str):
        self._prefix = {}
        for status, reason in REASONS.items():
            head = f"HTTP/1.1 {status} {reason}\r\nServer: {server_name}\r\n"
            if status not in (100, 204):
                head += "Content-Type: application/json\r\n"
            self._prefix[status] = head.encode("ascii")
        self.date = b""
        self.refresh_date()

    def refresh_date(self) -> None:
        self.date = b"Date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"

    def build(self, status: int, body: bytes, keep_alive: bool, http10: bool,
              extra: bytes = b"") -> bytes:
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if http10 else b""
        else:
            connection = b"Connection: close\r\n"
        if status == 204:
            return b"%s%s%s%s\r\n" % (self._prefix[204], self.date, connection, extra)
        return b"%s%sContent-Length: %d\r\n%s%s\r\n%s" % (
            self._prefix[status], self.date, len(body), connection, extra, body)


def with_connection_close(response: bytes) -> bytes:
    """A keep-alive response built by ResponseHead.build, turned into a closing one."""
    if b"\r\nConnection: keep-alive\r\n" in response.split(b"\r\n\r\n", 1)[0] + b"\r\n":
        return response.replace(b"\r\nConnection: keep-alive\r\n", b"\r\nConnection: close\r\n", 1)
    return response.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)


class Request:
    """One request from the moment its first byte is parsed until its response is written."""

    __slots__ = ("method", "url", "body", "content_length", "head_bytes", "keep_alive", "http10",
                 "expect_continue", "received_ns", "response", "api_key")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.body = None          # bytes, or a list of parts while a chunked body accumulates
        self.content_length = -1
        self.head_bytes = 0
        self.keep_alive = True
        self.http10 = False
        self.expect_continue = False
        self.received_ns = 0
        self.response = None      # response bytes once complete
        self.api_key = None       # the X-API-Key value (only read by ApiKeyProtocol)

    @property
    def path(self) -> bytes:
        url = self.url
        q = url.find(b"?")
        return url if q < 0 else url[:q]

    def body_bytes(self) -> bytes:
        body = self.body
        if body is None:
            return b""
        if type(body) is list:
            return b"".join(body)
        return body


class HttpProtocol(asyncio.Protocol):
    """One connection. `app.handle(conn, request)` is called for every complete request and must
    eventually call `conn.respond(request, status, body)` exactly once."""

    __slots__ = ("app", "head", "transport", "_parser", "_current", "pipeline", "_reading",
                 "_writing_paused", "_closing", "_ended", "_peer_eof", "_last_active",
                 "_raw_head_bytes", "_request_started")

    def __init__(self, app, head: ResponseHead):
        self.app = app
        self.head = head
        self.transport = None
        self._parser = httptools.HttpRequestParser(self)
        self._current = None          # the request being parsed (not yet complete)
        self.pipeline = deque()       # complete requests awaiting their response, in order
        self._reading = True
        self._writing_paused = False
        self._closing = False         # no more responses will be written; discard input
        self._ended = False           # a request ended the connection: parse nothing after it
        self._peer_eof = False
        self._last_active = 0.0
        self._raw_head_bytes = 0
        self._request_started = 0.0

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._last_active = time.monotonic()
        self.app.connections.add(self)
        if self.app.draining:
            self._close_now()

    def connection_lost(self, exc) -> None:
        self.app.connections.discard(self)
        self._closing = True
        self.transport = None
        # Requests still being handled will find transport None and drop their response.

    def data_received(self, data: bytes) -> None:
        if self._closing or self._ended:
            return
        self._last_active = time.monotonic()
        # The parser buffers a header line until it ends (httptools reports a header only once the
        # next one starts), so raw bytes are counted as well as parsed ones: a client must not be
        # able to grow that buffer without bound by never ending a line. _raw_head_bytes is the raw
        # size of the unfinished head so far; -1 / -2: the head began during this read, as its first
        # message (it starts at the beginning of `data`) / after another one (start unknown).
        current = self._current
        if current is None:
            self._raw_head_bytes = 0
        elif current.method == b"":
            # Still inside a request head that began in an earlier read.
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > MAX_HEADER_BYTES:
                self._reject(431, f"request headers over {MAX_HEADER_BYTES} bytes")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpReject):
                self._reject(cause.status, cause.message)
            elif isinstance(cause, _StopParsing):
                pass
            else:
                # A bug in a callback (the application's handler included): log it, answer 500
                # after what is in flight, and drop the connection whose state is now unknown.
                traceback.print_exception(cause, file=sys.stderr)
                self._reject(500, "internal error")
        except httptools.HttpParserUpgrade:
            # The request was complete (an Upgrade we do not speak): ignore the protocol switch.
            self._ended = True
        except httptools.HttpParserError as exc:
            reason = str(exc).strip() or type(exc).__name__
            self._reject(400, f"malformed HTTP request: {reason[:100]}")
        else:
            current = self._current
            if current is not None and self._raw_head_bytes < 0 and current.method == b"":
                # A head begun in this read is still unfinished at its end.
                if self._raw_head_bytes == -1:
                    self._raw_head_bytes = len(data)
                    if self._raw_head_bytes > MAX_HEADER_BYTES:
                        self._reject(431, f"request headers over {MAX_HEADER_BYTES} bytes")
                else:
                    # Behind other messages of the same read: where it began is not known, so
                    # raw counting starts with the next read (the parsed bytes are counted anyway;
                    # at most one read goes uncounted).
                    self._raw_head_bytes = 0

    def eof_received(self):
        # Half-close by the client: answer what is in flight, then close (return True keeps our
        # side open until then).
        self._ended = True
        self._peer_eof = True
        if not self.pipeline:
            return False
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        request = Request()
        self._current = request
        self._raw_head_bytes = -1 if self._raw_head_bytes == 0 else -2
        self._request_started = self._last_active

    def on_url(self, url: bytes) -> None:
        request = self._current
        request.url += url
        request.head_bytes += len(url)
        if request.head_bytes > MAX_HEADER_BYTES:
            raise HttpReject(431, f"request headers over {MAX_HEADER_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._current
        request.head_bytes += len(name) + len(value) + 4
        if request.head_bytes > MAX_HEADER_BYTES:
            raise HttpReject(431, f"request headers over {MAX_HEADER_BYTES} bytes")
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            request.content_length = int(value)        # llhttp has validated the digits
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self._current
        parser = self._parser
        request.method = parser.get_method()
        request.keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                # llhttp reads a request line without a version as HTTP/0.9.
                raise HttpReject(400, "malformed HTTP request: HTTP/1.0 or HTTP/1.1 expected"
                                      if version == "0.9" else
                                      f"malformed HTTP request: unsupported HTTP version {version}")
            request.http10 = True
        if request.content_length > MAX_BODY_BYTES:
            raise HttpReject(413, f"request body over {MAX_BODY_BYTES} bytes")
        if request.expect_continue and not self.pipeline and self.transport is not None:
            # Only when nothing is pending, so that the interim response cannot overtake the
            # answer to an earlier pipelined request.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        request = self._current
        body = request.body
        if body is None:
            if len(data) > MAX_BODY_BYTES:
                raise HttpReject(413, f"request body over {MAX_BODY_BYTES} bytes")
            request.body = data
            return
        if type(body) is not list:
            body = request.body = [body]
        body.append(data)
        if sum(map(len, body)) > MAX_BODY_BYTES:
            raise HttpReject(413, f"request body over {MAX_BODY_BYTES} bytes")

    def on_message_complete(self) -> None:
        request = self._current
        self._current = None
        request.received_ns = time.perf_counter_ns()
        if self.app.draining:
            request.keep_alive = False
        self.pipeline.append(request)
        if len(self.pipeline) >= MAX_PIPELINE:
            self._update_reading()
        self.app.handle(self, request)
        if not request.keep_alive:
            self._ended = True
            raise _StopParsing()

    # -- responses --------------------------------------------------------------------------
    def respond(self, request: Request, status: int, body: bytes, extra: bytes = b"") -> None:
        """Complete `request`; write every completed response at the head of the FIFO."""
        request.response = self.head.build(status, body, request.keep_alive, request.http10, extra)
        pipeline = self.pipeline
        if not pipeline or pipeline[0] is not request:
            return                              # an earlier request is still being handled
        transport = self.transport
        while pipeline and pipeline[0].response is not None:
            done = pipeline.popleft()
            if transport is None or self._closing:
                continue
            transport.write(done.response)
            if not done.keep_alive and not self.app.draining:
                # Nothing is parsed after a request that ends the connection.
                self._finish()
                pipeline.clear()
                return
        if not pipeline:
            self._last_active = time.monotonic()
            if self._ended or self.app.draining:
                self._finish()
                return
        self._update_reading()

    def _reject(self, status: int, message: str) -> None:
        """The byte stream is unreadable: answer (after what is in flight) and close."""
        partial = self._current
        self._current = None
        self._ended = True
        request = Request()
        request.keep_alive = False
        self.pipeline.append(request)
        self.app.count_rejected(partial.path if partial is not None else b"")
        self.respond(request, status, self.app.error_body(message))

    def _finish(self) -> None:
        """Lingering close: send FIN after the last response, discard input, close soon."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        try:
            if not self._peer_eof and transport.can_write_eof():
                transport.write_eof()
                if not self._reading:
                    transport.resume_reading()
                    self._reading = True
                asyncio.get_running_loop().call_later(LINGER_S, transport.close)
                return
        except (OSError, RuntimeError):
            pass
        transport.close()

    def _close_now(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        want = not self._writing_paused and len(self.pipeline) < (
            RESUME_PIPELINE if not self._reading else MAX_PIPELINE)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # -- housekeeping (called once per second by the app) --------------------------------------
    def check_timeouts(self, now: float) -> None:
        if self._closing or self.transport is None:
            return
        if self._current is not None:
            # A request begun and not complete in time: slow headers or a trickled body.
            if now - self._request_started > REQUEST_TIMEOUT_S:
                self._close_now()
        elif not self.pipeline and now - self._last_active > IDLE_TIMEOUT_S:
            self._close_now()

    def close_if_idle(self) -> None:
        """Shutdown: close now unless a request is in flight (then close after its response).
        Every response still owed says `Connection: close` (those completed later do too:
        on_message_complete sees app.draining)."""
        if not self.pipeline:
            self._close_now()
            return
        for request in self.pipeline:
            if request.keep_alive:
                request.keep_alive = False
                if request.response is not None:     # built already, waiting behind another
                    request.response = with_connection_close(request.response)

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()


class ApiKeyProtocol(HttpProtocol):
    """HttpProtocol that also keeps each request's X-API-Key header (httptools binds the
    callbacks when the parser is created, so the plain protocol pays nothing for this)."""

    __slots__ = ()

    def on_header(self, name: bytes, value: bytes) -> None:
        HttpProtocol.on_header(self, name, value)
        if len(name) == 9 and name.lower() == b"x-api-key":
            self._current.api_key = value
