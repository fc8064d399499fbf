"""HTTP behaviour of the contract: every error status with its JSON body, keep-alive across errors,
pipelining, HTTP/1.0, Connection: close, chunked bodies, size limits, /health, slow clients."""
from __future__ import annotations

import json

import pytest
from conformance_http import assert_json_error, build_request, rank_body

from rankbench.config import MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_ITEMS


def test_health(server):
    with server.connect() as conn:
        response = conn.request("GET", "/health")
    assert response.status == 200, response
    assert response.headers.get("content-type", "").startswith("application/json")
    assert response.json() == {"status": "ok", "server": server.name}


BAD_BODIES = [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2, 3]", None),
    (b'"just a string"', None),
    (b'{"item_ids": [1], "top_k": 5}', "user_id"),
    (b'{"user_id": "7", "item_ids": [1]}', "user_id"),
    (b'{"user_id": true, "item_ids": [1]}', "user_id"),
    (b'{"user_id": 7.0, "item_ids": [1]}', "user_id"),
    (b'{"user_id": null, "item_ids": [1]}', "user_id"),
    (b'{"user_id": 9223372036854775808, "item_ids": [1]}', "user_id"),
    (b'{"user_id": 7}', "item_ids"),
    (b'{"user_id": 7, "item_ids": 5}', "item_ids"),
    (b'{"user_id": 7, "item_ids": []}', "item_ids"),
    (json.dumps({"user_id": 7, "item_ids": list(range(1, MAX_ITEMS + 2))}).encode(), "item_ids"),
    (b'{"user_id": 7, "item_ids": [1, true]}', "item_ids"),
    (b'{"user_id": 7, "item_ids": [1, 2.0]}', "item_ids"),
    (b'{"user_id": 7, "item_ids": [1, "3"]}', "item_ids"),
    (b'{"user_id": 7, "item_ids": [null]}', "item_ids"),
    (b'{"user_id": 7, "item_ids": [-9223372036854775809]}', "item_ids"),
    (b'{"user_id": 7, "item_ids": [1], "top_k": 0}', "top_k"),
    (b'{"user_id": 7, "item_ids": [1], "top_k": 1001}', "top_k"),
    (b'{"user_id": 7, "item_ids": [1], "top_k": "5"}', "top_k"),
    (b'{"user_id": 7, "item_ids": [1], "top_k": true}', "top_k"),
    (b'{"user_id": 7, "item_ids": [1], "top_k": 2.5}', "top_k"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES,
                         ids=[f"{i}-{field or 'body'}" for i, (_, field) in enumerate(BAD_BODIES)])
def test_bad_rank_bodies_are_400_naming_the_field(server, body, field):
    with server.connect() as conn:
        assert_json_error(conn.request("POST", "/rank", body), 400, field)
        # ...and the connection is still usable.
        assert conn.rank(1, [1, 2], 2).status == 200


def test_unknown_fields_are_ignored(server):
    with server.connect() as conn:
        response = conn.request("POST", "/rank", b'{"user_id": 3, "item_ids": [1, 2], "top_k": 2, '
                                                 b'"explain": true, "extra": {"a": [1]}}')
    assert response.status == 200, response
    assert sorted(item["id"] for item in response.json()["items"]) == [1, 2]


def test_unknown_path_is_404(server):
    with server.connect() as conn:
        assert_json_error(conn.request("GET", "/nope"), 404)
        assert_json_error(conn.request("POST", "/rank/extra", rank_body(1, [1])), 404)


@pytest.mark.parametrize("method,path", [("GET", "/rank"), ("PUT", "/rank"), ("DELETE", "/rank"),
                                         ("POST", "/health"), ("POST", "/stats"),
                                         ("GET", "/stats/reset")])
def test_wrong_method_is_405(server, method, path):
    with server.connect() as conn:
        body = rank_body(1, [1]) if method in ("PUT", "POST") else None
        assert_json_error(conn.request(method, path, body), 405)
        assert conn.request("GET", "/health").status == 200


def _padded(size: int) -> bytes:
    """A valid /rank body of exactly `size` bytes (JSON whitespace as padding)."""
    core = rank_body(1, [1, 2, 3], 3)
    assert size >= len(core)
    return core[:-1] + b" " * (size - len(core)) + b"}"


def test_body_at_the_limit_is_accepted(server):
    with server.connect() as conn:
        response = conn.request("POST", "/rank", _padded(MAX_BODY_BYTES))
    assert response.status == 200, response


def test_body_over_the_limit_is_413(server):
    with server.connect() as conn:
        assert_json_error(conn.request("POST", "/rank", _padded(MAX_BODY_BYTES + 1)), 413)
    # The server is fine afterwards.
    with server.connect() as conn:
        assert conn.rank(1, [1], 1).status == 200


def test_chunked_body_over_the_limit_is_413(server):
    body = _padded(MAX_BODY_BYTES + 4096)
    chunks = [body[i:i + 8192] for i in range(0, len(body), 8192)]
    with server.connect() as conn:
        assert_json_error(conn.request("POST", "/rank", chunks=chunks), 413)
    with server.connect() as conn:
        assert conn.rank(1, [1], 1).status == 200


def test_headers_over_the_limit_are_431(server):
    with server.connect() as conn:
        response = conn.request("GET", "/health", headers={"X-Big": "a" * (MAX_HEADER_BYTES + 1024)})
        assert_json_error(response, 431)
    many = {f"X-Header-{i}": "b" * 100 for i in range((MAX_HEADER_BYTES // 100) + 20)}
    with server.connect() as conn:
        assert_json_error(conn.request("GET", "/health", headers=many), 431)
    with server.connect() as conn:
        assert conn.request("GET", "/health", headers={"X-Fine": "c" * 4096}).status == 200


@pytest.mark.parametrize("raw", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"POST /rank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
], ids=["request-line", "content-length", "chunk-size"])
def test_malformed_http_is_400_json(server, raw):
    with server.connect() as conn:
        conn.send(raw)
        assert_json_error(conn.read_response(), 400)


def test_keep_alive_survives_4xx(server):
    with server.connect() as conn:
        assert conn.request("POST", "/rank", b"{oops").status == 400
        assert conn.rank(10**15, [1], 1).status == 404
        assert conn.request("GET", "/missing").status == 404
        assert conn.request("GET", "/rank").status == 405
        assert conn.request("POST", "/rank", rank_body(1, [1], 0)).status == 400
        response = conn.rank(2, [10, 20, 30], 2)
        assert response.status == 200, response
        assert len(response.json()["items"]) == 2
        assert not conn.peer_closed


def test_three_pipelined_requests_come_back_in_order(server):
    """Sent in one write; the first is the slowest (1000 items), so a server that answered in
    completion order would get it wrong."""
    first = rank_body(8, list(range(1, MAX_ITEMS + 1)), 1000)
    third = rank_body(9, [5, 6], 2)
    with server.connect() as conn:
        expected = [conn.request("POST", "/rank", first).body,
                    conn.request("GET", "/health").body,
                    conn.request("POST", "/rank", third).body]
        conn.send(build_request("POST", "/rank", first) + build_request("GET", "/health")
                  + build_request("POST", "/rank", third))
        responses = [conn.read_response() for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 200], responses
    got = [json.loads(r.body) for r in responses]
    assert got == [json.loads(b) for b in expected]
    assert len(got[0]["items"]) == MAX_ITEMS and got[2]["user_id"] == 9


def test_pipelined_errors_keep_their_place(server):
    with server.connect() as conn:
        conn.send(build_request("POST", "/rank", b"{bad") + build_request("GET", "/nope")
                  + build_request("POST", "/rank", rank_body(4, [7], 1))
                  + build_request("POST", "/rank", rank_body(10**15, [7], 1)))
        statuses = [conn.read_response().status for _ in range(4)]
    assert statuses == [400, 404, 200, 404]


def test_http_1_0_is_answered_and_closed(server):
    with server.connect() as conn:
        response = conn.request("POST", "/rank", rank_body(3, [1, 2, 3], 3), version="1.0")
        assert response.status == 200, response
        assert len(response.json()["items"]) == 3
        assert conn.closed_by_server(5.0), "HTTP/1.0 without keep-alive must be closed"


def test_http_1_0_get(server):
    with server.connect() as conn:
        response = conn.request("GET", "/health", version="1.0")
        assert response.status == 200 and response.json()["status"] == "ok"
        assert conn.closed_by_server(5.0)


def test_connection_close_is_honoured(server):
    with server.connect() as conn:
        response = conn.request("POST", "/rank", rank_body(3, [1, 2], 2),
                                headers={"Connection": "close"})
        assert response.status == 200, response
        assert conn.closed_by_server(5.0)


def test_chunked_body_is_accepted(server):
    body = rank_body(12, list(range(100, 140)), 15)
    with server.connect() as conn:
        plain = conn.request("POST", "/rank", body)
        head = build_request("POST", "/rank", chunks=[])[:-len(b"0\r\n\r\n")]
        conn.send(head)
        for i in range(0, len(body), 37):          # chunks in separate writes
            piece = body[i:i + 37]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        chunked = conn.read_response()
    assert plain.status == chunked.status == 200, (plain, chunked)
    assert chunked.json() == plain.json()


def test_request_split_across_packets(server):
    raw = build_request("POST", "/rank", rank_body(6, [1, 2, 3], 3))
    with server.connect() as conn:
        for i in range(0, len(raw), 7):
            conn.send(raw[i:i + 7])
        assert conn.read_response().status == 200


def test_stalled_request_head_is_closed(server):
    """A client that never finishes its headers must not hold the connection forever."""
    with server.connect(timeout=40) as conn:
        conn.send(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert conn.closed_by_server(30.0), "connection with an unfinished request head still open"
