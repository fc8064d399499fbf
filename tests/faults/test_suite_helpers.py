"""The fault suite's own machinery, without any server: the raw client's outcomes, the error-body
checks, the corpus and fuzzer invariants, and the report renderer."""
from __future__ import annotations

import socket
import struct
import threading

import orjson
import pytest

from .checks import error_problems, longest_echo_over
from .corpus import CASES, CLOSED, VALID_BODY, by_name
from .fuzz import mutated_request
from .rawhttp import Connection, Response, exchange
from .report import render


class ScriptedServer:
    """Accepts one connection, reads what arrives within a moment, then plays `script`."""

    def __init__(self, script) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(0.5)
        try:
            conn.recv(65536)
        except socket.timeout:
            pass
        self.script(conn)

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


def _send_close(data: bytes):
    def script(conn):
        conn.sendall(data)
        conn.close()
    return script


def _reset(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.mark.parametrize("script, outcome, status", [
    (_send_close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), "response", 200),
    (_send_close(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
     "response", 400),
    (_send_close(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited body"), "response", 200),
    (_send_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), "closed", None),
    (_send_close(b"SSH-2.0-OpenSSH\r\n"), "garbled", None),
    (_send_close(b""), "closed", None),
    (_reset, "reset", None),
], ids=["complete", "interim-then-final", "close-delimited", "truncated", "garbled", "closed",
        "reset"])
def test_raw_client_outcomes(script, outcome, status):
    server = ScriptedServer(script)
    try:
        answer = exchange("127.0.0.1", server.port, b"GET / HTTP/1.1\r\n\r\n", timeout=5)
    finally:
        server.close()
    assert (answer.outcome, answer.status) == (outcome, status), answer


def test_raw_client_times_out_instead_of_hanging():
    held = threading.Event()
    server = ScriptedServer(lambda conn: (held.wait(5), conn.close()))
    try:
        conn = Connection("127.0.0.1", server.port, timeout=0.5)
        conn.send(b"GET / HTTP/1.1\r\n\r\n")
        answer = conn.read_response()
        conn.close()
    finally:
        held.set()
        server.close()
    assert answer.outcome == "timeout"


def _json_response(body: bytes, content_type: str = "application/json") -> Response:
    return Response("response", 400, {"content-type": content_type}, body)


def test_error_checks():
    sent = b"GET /" + b"A" * 4000
    assert error_problems(_json_response(b'{"error":"unknown path"}'), sent) == []
    assert error_problems(_json_response(b'{"error":"x"}', "text/plain"), sent)
    assert error_problems(_json_response(b""), sent)
    assert error_problems(_json_response(b'{"message":"x"}'), sent)
    assert error_problems(_json_response(b'{"error":""}'), sent)
    echo = b'{"error":"unknown path /' + b"A" * 200 + b'"}'
    assert any("echoes" in p for p in error_problems(_json_response(echo), sent))
    assert not longest_echo_over(b'{"error":"' + b"A" * 128 + b'"}', sent)
    assert longest_echo_over(b'{"error":"' + b"A" * 129 + b'"}', sent)


def test_corpus_invariants():
    names = by_name()
    assert len(CASES) >= 60 and len(names) == len(CASES)
    for case in CASES:
        assert case.expect and all(e == CLOSED or e.isdigit() for e in case.expect), case.name
        assert not (case.keeps_connection and case.half_close), case.name
    body = names["body_exactly_64k"].request.split(b"\r\n\r\n", 1)[1]
    assert len(body) == 65536 and orjson.loads(body) == orjson.loads(VALID_BODY)
    assert len(names["body_64k_plus_1"].request.split(b"\r\n\r\n", 1)[1]) == 65537
    for name in ("json_deep_array_30000", "json_deep_object_in_user_id", "json_garbage_60k"):
        assert len(names[name].request.split(b"\r\n\r\n", 1)[1]) <= 65536, name


def test_fuzz_cases_are_reproducible_from_their_index():
    first = [mutated_request(7, i) for i in range(200)]
    assert first == [mutated_request(7, i) for i in range(200)]
    assert mutated_request(7, 150) == first[150]
    assert {kind for kind, _ in first} == {"json", "bytes"}
    assert len({data for _, data in first}) > 190
    assert mutated_request(8, 3) != mutated_request(7, 3)


def test_report_renders_recorded_answers():
    rows = [
        {"kind": "test", "test": "test_bad_input", "server": "a", "case": "body_empty",
         "outcome": "passed", "nodeid": "x[a-body_empty]"},
        {"kind": "test", "test": "test_bad_input", "server": "b", "case": "body_empty",
         "outcome": "failed", "nodeid": "x[b-body_empty]", "message": "boom"},
        {"kind": "answer", "server": "a", "case": "body_empty", "label": "400", "ok": True,
         "problems": [], "sent": "POST", "received": ["HTTP/1.1 400"]},
        {"kind": "answer", "server": "b", "case": "body_empty", "label": "200", "ok": False,
         "problems": ["answer 200, expected 400"], "sent": "POST", "received": ["HTTP/1.1 200"]},
        {"kind": "phase", "server": "a", "when": "call", "duration_s": 1.5},
    ]
    text = render(rows, "ci", 1)
    assert "| body_empty | `" in text
    line = next(line for line in text.splitlines() if line.startswith("| body_empty |"))
    assert line.endswith("| 400 | **200** |")
    assert "answer 200, expected 400" in text
    assert "| a | 1 | 1 | 0 | 0 | 1 / 1 |" in text
