"""A deliberately small HTTP/1.1 client over raw sockets, so the suite controls every byte it sends
(pipelining, chunking, HTTP/1.0, oversized heads) and sees exactly what a server sends back.
Responses are framed by httptools' response parser, not by hand."""
from __future__ import annotations

import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import httptools

TIMEOUT_S = 15.0


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


class _Collector:
    """httptools callbacks: turns the byte stream into complete Response objects."""

    def __init__(self) -> None:
        self.done: deque[Response] = deque()
        self._current: Response | None = None
        self._parts: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._current = Response(0)
        self._parts = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._current.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self._parts.append(data)

    def on_message_complete(self) -> None:
        self._current.body = b"".join(self._parts)
        if self._current.status != 100:          # interim responses are not answers
            self.done.append(self._current)
        self._current = None


def build_request(method: str, path: str, body: bytes | None = None, *, version: str = "1.1",
                  headers: dict[str, str] | None = None, chunks: list[bytes] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    extra = dict(headers or {})
    if chunks is not None:
        lines.append("Content-Type: application/json")
        lines.append("Transfer-Encoding: chunked")
    elif body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in extra.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if chunks is not None:
        return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return head + (body or b"")


def rank_body(user_id, item_ids, top_k=None) -> bytes:
    payload = {"user_id": user_id, "item_ids": item_ids}
    if top_k is not None:
        payload["top_k"] = top_k
    return json.dumps(payload).encode()


class Connection:
    def __init__(self, host: str, port: int, timeout: float = TIMEOUT_S):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._collector = _Collector()
        self.peer_closed = False

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once; False when the peer closed."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.peer_closed = True
            return False
        self._collector.parser.feed_data(data)
        return True

    def read_response(self, timeout: float = TIMEOUT_S) -> Response:
        deadline = time.monotonic() + timeout
        while not self._collector.done:
            if self.peer_closed or not self._fill(deadline):
                raise ConnectionError("server closed the connection before a complete response")
        return self._collector.done.popleft()

    def request(self, method: str, path: str, body: bytes | None = None, **kwargs) -> Response:
        self.send(build_request(method, path, body, **kwargs))
        return self.read_response()

    def rank(self, user_id, item_ids, top_k=None) -> Response:
        return self.request("POST", "/rank", rank_body(user_id, item_ids, top_k))

    def closed_by_server(self, timeout: float) -> bool:
        """True if the server closes the connection (EOF or reset) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._fill(deadline):
                    return True
            except (socket.timeout, TimeoutError):
                return False
        return False


def assert_json_error(response, status: int, mentions: str | None = None) -> str:
    assert response.status == status, response
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    data = response.json()
    assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], data
    if mentions is not None:
        assert mentions in data["error"], f"error should name {mentions!r}: {data['error']!r}"
    return data["error"]
