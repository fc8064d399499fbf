"""uvicorn's httptools protocol with the contract's HTTP limits, which uvicorn does not have.

uvicorn (0.54, `--http httptools`, what `fastapi run` picks when httptools is installed) has no
limit on request heads or bodies, no timeout on a request that never completes (its keep-alive
timer runs only between requests), answers malformed HTTP with a text/plain 400, and closes a
connection whose client half-closed before the response is written. None of that is configurable
(`--limit-concurrency` and `--limit-max-requests` are other things; h11's
`h11_max_incomplete_event_size` bounds only the head and answers text/plain). So this subclass adds,
without touching uvicorn's request cycle (the ASGI path every request takes is uvicorn's own):

- 431 when the request line and headers pass 16 KiB, counted as parsed and as raw bytes (a header
  line that never ends grows httptools' buffer, as in py_servers/http.py);
- 413 when a body passes 64 KiB (from Content-Length, or while chunks accumulate);
- 400 with a JSON body for malformed HTTP and for versions other than HTTP/1.0 and 1.1;
  these three close the connection after the answer, with a lingering close (FIN, then discard what
  the client still sends for LINGER_S) so the client reads the answer instead of a reset; an error
  found behind a pipelined request still in flight is written after that request's response;
- a request not complete REQUEST_TIMEOUT_S after its first byte closes the connection (the timer is
  armed only when a request spans more than one read, so the common request costs nothing), and a
  connection with nothing to do is closed after IDLE_TIMEOUT_S, from its opening too;
- a client that half-closes after a complete request still gets its answer.
The limits and timeouts are the ones py_servers uses (same constants, same environment variables).
"""
from __future__ import annotations

import asyncio

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from py_servers.http import LINGER_S, REQUEST_TIMEOUT_S
from rankbench.config import MAX_BODY_BYTES, MAX_HEADER_BYTES

HEADERS_TOO_LARGE = f"request headers over {MAX_HEADER_BYTES} bytes"
BODY_TOO_LARGE = f"request body over {MAX_BODY_BYTES} bytes"


class Reject(Exception):
    """Raised from a parser callback: the byte stream cannot be read further."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response_bytes(status: int, message: str, default_headers) -> bytes:
    body = orjson.dumps({"error": message})
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


class ContractHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_message = False      # a request has begun and is not complete
        self._in_head = False         # ... and its head is not complete
        self._head_bytes = 0          # parsed head bytes of the current request
        self._raw_head = 0            # raw bytes of an unfinished head; -1/-2: begun in this read
        self._content_length = -1
        self._body_bytes = 0
        self._request_timer: asyncio.TimerHandle | None = None
        self._running = None          # the cycle whose ASGI task runs now
        self._ended = False           # a rejected request ended the stream: discard input
        self._deferred: bytes | None = None   # an error answer owed after the running response
        self._peer_eof = False

    # -- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends
        # anything would stay open forever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._cancel_request_timer()
        self._drop_cycles()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self._unset_keepalive_if_required()
        if not self._in_message:
            self._raw_head = 0
        elif self._in_head:
            self._raw_head += len(data)
            if self._raw_head > MAX_HEADER_BYTES:
                self._reject(431, HEADERS_TOO_LARGE)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._reject(cause.status, cause.message)
            else:   # e.g. a URL that is not ASCII, refused by uvicorn's own callback
                self._reject(400, "malformed HTTP request")
            return
        except httptools.HttpParserUpgrade:
            self._reject(400, "malformed HTTP request: protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            reason = str(exc).strip() or type(exc).__name__
            self._reject(400, f"malformed HTTP request: {reason[:100]}")
            return
        if self._in_head and self._raw_head < 0:
            # A head begun in this read is unfinished at its end: count the read if the head
            # started it, else start counting with the next read (parsed bytes count anyway).
            self._raw_head = len(data) if self._raw_head == -1 else 0
            if self._raw_head > MAX_HEADER_BYTES:
                self._reject(431, HEADERS_TOO_LARGE)
                return
        if self._in_message and self._request_timer is None:
            self._request_timer = self.loop.call_later(REQUEST_TIMEOUT_S, self._request_timed_out)

    def eof_received(self) -> bool:
        self._peer_eof = True
        running = self._running
        if self.pipeline or (running is not None and not running.response_complete
                             and not running.disconnected):
            # Keep our side open until the responses owed are written (on_response_complete
            # closes; an unfinished request behind them ends with its request timer).
            return True
        self._drop_cycles()         # an unfinished request can never complete now: close
        return False

    # -- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        self._head_bytes = self._body_bytes = 0
        self._content_length = -1
        self._raw_head = -1 if self._raw_head == 0 else -2
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEADER_BYTES:
            raise Reject(431, HEADERS_TOO_LARGE)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEADER_BYTES:
            raise Reject(431, HEADERS_TOO_LARGE)
        if len(name) == 14 and name.lower() == b"content-length":
            self._content_length = int(value)        # llhttp has validated the digits
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            # llhttp reads a request line without a version as HTTP/0.9.
            raise Reject(400, "malformed HTTP request: HTTP/1.0 or HTTP/1.1 expected")
        if self._content_length > MAX_BODY_BYTES:
            raise Reject(413, BODY_TOO_LARGE)
        super().on_headers_complete()
        self._in_head = False       # after: if uvicorn refuses the head, no cycle was made for it

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise Reject(413, BODY_TOO_LARGE)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_request_timer()
        super().on_message_complete()

    # -- responses ----------------------------------------------------------------------------
    def _start_asgi_task(self, cycle, app) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        running = self._running
        if self.transport.is_closing() or self.pipeline or (
                running is not None and not running.response_complete):
            return      # the next pipelined request has started: its answer comes first
        if self._deferred is not None:
            self._write_and_linger(self._deferred)
        elif self._peer_eof:
            self._drop_cycles()
            self.transport.close()

    def _reject(self, status: int, message: str) -> None:
        """The byte stream is unreadable: answer (after the response in flight) and close."""
        self._ended = True
        self._cancel_request_timer()
        if self._in_message and not self._in_head and self.cycle is not None:
            # The rejected request got a cycle (e.g. a chunked body that grew too large): it must
            # never write, and must not wait for a body that will not come.
            rejected = self.cycle
            rejected.disconnected = True
            rejected.message_event.set()
            self.pipeline = type(self.pipeline)(p for p in self.pipeline if p[0] is not rejected)
        answer = error_response_bytes(status, message, self.server_state.default_headers)
        running = self._running
        if self.pipeline or (running is not None and not running.response_complete
                             and not running.disconnected):
            self._deferred = answer
            return
        self._write_and_linger(answer)

    def _write_and_linger(self, answer: bytes) -> None:
        transport = self.transport
        self._ended = True
        self._unset_keepalive_if_required()
        if transport.is_closing():      # e.g. after a response that closes the connection
            return
        transport.write(answer)
        try:
            if not self._peer_eof and transport.can_write_eof():
                transport.write_eof()
                self.flow.resume_reading()
                self.loop.call_later(LINGER_S, transport.close)
                return
        except (OSError, RuntimeError):
            pass
        transport.close()

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self._in_message and not self.transport.is_closing():
            self._drop_cycles()
            self.transport.close()

    def _drop_cycles(self) -> None:
        """Before the transport closes: every unanswered request must stop writing (uvloop raises
        on a write to a closed transport) and stop waiting for a body. uvicorn marks only the
        newest cycle, which misses the one running when pipelined requests queue behind it."""
        cycles = [self._running, self.cycle, *(cycle for cycle, _ in self.pipeline)]
        for cycle in cycles:
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
