"""The bad-input corpus: requests sent as raw bytes, each with the answer the contract requires.

Every case is checked the same way (test_bad_input.py): the answer's status (or, where the contract
allows it, a close), a JSON error body `{"error": "..."}` with a JSON content type for every 4xx, no
more than a short excerpt of the input echoed back, the connection kept alive after an error when
the request itself was readable, and then a valid request on a new connection answered 200.

`expect` is a set because a few inputs have two defensible answers under the contract (a method
name llhttp cannot parse is either malformed HTTP, 400, or a wrong method, 405); each such case says
why in `note`. Everything the contract pins down has exactly one answer.

Seeded data (SCALE=1): users 1..200000 and items 1..100000 exist; ids outside do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import orjson

from .rawhttp import chunked, post_rank, request

CLOSED = "closed"   # the server may close without an answer (a truncated request it cannot finish)

VALID_BODY = b'{"user_id": 7, "item_ids": [12, 99, 3], "top_k": 2}'
VALID_REQUEST = post_rank(VALID_BODY)


def check_valid_answer(body: bytes) -> str | None:
    """The answer to VALID_REQUEST: the two best of items 12, 99, 3 for user 7."""
    return _items(body, user_id=7, count=2, subset={12, 99, 3})


def _items(body: bytes, *, user_id: int, count: int | None = None,
           max_count: int | None = None, subset: set[int] | None = None,
           ids: list[int] | None = None) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"200 body is not JSON: {body[:80]!r}"
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        return f"200 body has no `items` list: {body[:80]!r}"
    if data.get("user_id") != user_id:
        return f"user_id {data.get('user_id')!r} in the answer, expected {user_id}"
    got = [item.get("id") for item in data["items"] if isinstance(item, dict)]
    if len(got) != len(set(got)):
        return f"an item id appears twice: {got[:20]}"
    if count is not None and len(got) != count:
        return f"{len(got)} items in the answer, expected {count}"
    if max_count is not None and len(got) > max_count:
        return f"{len(got)} items in the answer, expected at most {max_count}"
    if subset is not None and not set(got) <= subset:
        return f"answer holds ids that were not asked for: {sorted(set(got) - subset)[:10]}"
    if ids is not None and sorted(got) != sorted(ids):
        return f"answer ids {sorted(got)[:20]}, expected {sorted(ids)[:20]}"
    return None


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    request: bytes
    expect: frozenset[str]             # statuses as text, and/or CLOSED
    keeps_connection: bool = False     # readable request: the same connection must go on working
    half_close: bool = False           # shut our write side down after sending (EOF to the server)
    followups: tuple[str, ...] = ()    # statuses of further (pipelined) answers, in order
    check: Callable[[bytes], str | None] | None = None   # extra check of a 200 body
    note: str = ""

    @property
    def expected_label(self) -> str:
        return " or ".join(sorted(self.expect))

    def excerpt(self, limit: int = 120) -> str:
        """The request as printable text for tables: escapes, long runs shortened."""
        return shorten(self.request, limit)


# Deviations from the contract that a server's HTTP stack imposes and does not let us configure,
# keyed by (registry language, case). They are stated in docs/contract.md; for them the test expects
# the documented answer exactly (still a short JSON error, and the server must still serve), so a
# server that changes behaviour fails, and docs/robustness.md lists them as deviations, not passes.
KNOWN_DEVIATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("rust", "header_count_100_ok"):
        ("431", "actix-http accepts at most 96 header lines (a constant, not a setting)"),
    ("rust", "header_line_never_ends"):
        ("408", "actix-http buffers up to 128 KiB of request head and answers at its 5 s head timeout"),
}


def shorten(data: bytes, limit: int = 120) -> str:
    text = data.decode("latin-1").encode("unicode_escape").decode("ascii")
    if len(text) <= limit:
        return text
    return f"{text[:limit - 30]}...({len(data)} bytes)...{text[-20:]}"


def _e(*statuses: str) -> frozenset[str]:
    return frozenset(statuses)


def _rank(body: bytes | str) -> bytes:
    return post_rank(body.encode() if isinstance(body, str) else body)


def _json_case(name: str, body: bytes | str, status: str = "400", note: str = "",
               check=None) -> Case:
    """A POST /rank whose HTTP framing is correct: the connection must survive the answer."""
    return Case(name, "json", _rank(body), _e(status), keeps_connection=True, check=check,
                note=note)


def _field_case(name: str, body: str, status: str = "400", note: str = "", check=None) -> Case:
    return Case(name, "fields", _rank(body), _e(status), keeps_connection=True, check=check,
                note=note)


def _pad_to(body: bytes, size: int) -> bytes:
    """`body` followed by JSON whitespace up to exactly `size` bytes."""
    assert len(body) <= size
    return body + b" " * (size - len(body))


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_ids_1000 = ",".join(str(i) for i in range(1, 1001))
_ids_1001 = ",".join(str(i) for i in range(1, 1002))
_deep_array = b'{"user_id": 7, "item_ids": ' + b"[" * 30000 + b"]" * 30000 + b"}"
_deep_object = b'{"user_id": 7, "item_ids": [12], "x": ' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}"
_deep_user = b'{"item_ids": [12], "user_id": ' + b'{"a":' * 10000 + b"7" + b"}" * 10000 + b"}"
_nested_1000 = b'{"user_id": 7, "item_ids": [12], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
_big_chunks = tuple(b" " * 8192 for _ in range(9))   # 73,728 bytes of JSON whitespace

CASES: tuple[Case, ...] = (
    # -- request line and method -------------------------------------------------------------------
    Case("request_line_garbage", "request-line", b"HELLO\r\n\r\n", _e("400")),
    Case("request_line_no_version", "request-line", b"GET /health\r\nHost: x\r\n\r\n", _e("400"),
         note="HTTP/0.9 is not spoken"),
    Case("request_line_bad_version", "request-line",
         b"GET /health HTTP/1.1x\r\nHost: x\r\n\r\n", _e("400")),
    Case("request_line_space_in_path", "request-line",
         b"GET /hea lth HTTP/1.1\r\nHost: x\r\n\r\n", _e("400")),
    Case("request_line_nul_in_path", "request-line",
         b"GET /hea\x00lth HTTP/1.1\r\nHost: x\r\n\r\n", _e("400")),
    Case("request_line_binary", "request-line", bytes(range(1, 32)) + b"\r\n\r\n", _e("400")),
    Case("method_invalid_token", "request-line", b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n",
         _e("400")),
    Case("method_unknown", "request-line", b"BREW /rank HTTP/1.1\r\nHost: x\r\n\r\n",
         _e("400", "405"), note="405 (known path) or 400 (parser knows no such method)"),
    Case("method_lowercase", "request-line", b"get /health HTTP/1.1\r\nHost: x\r\n\r\n",
         _e("400", "405"), note="methods are case-sensitive: `get` is not GET"),
    Case("method_get_on_rank", "method", b"GET /rank HTTP/1.1\r\nHost: x\r\n\r\n", _e("405"),
         keeps_connection=True),
    Case("method_put_on_rank", "method", request(b"PUT", b"/rank", VALID_BODY), _e("405"),
         keeps_connection=True),
    Case("method_post_on_health", "method", request(b"POST", b"/health", b"{}"), _e("405"),
         keeps_connection=True),
    Case("method_delete_on_stats", "method", request(b"DELETE", b"/stats"), _e("405"),
         keeps_connection=True),
    Case("method_get_on_stats_reset", "method", request(b"GET", b"/stats/reset"), _e("405"),
         keeps_connection=True),
    Case("path_unknown", "path", request(b"GET", b"/nope"), _e("404"), keeps_connection=True),
    Case("path_traversal", "path", request(b"GET", b"/../../etc/passwd"), _e("400", "404"),
         keeps_connection=True, note="400 (not an origin-form path) or 404"),
    Case("path_sql_injection", "path",
         request(b"POST", b"/rank%27%20OR%20%271%27=%271", VALID_BODY), _e("404"),
         keeps_connection=True),
    Case("path_long_4k", "path", request(b"GET", b"/" + b"A" * 4000), _e("404"),
         keeps_connection=True, note="the error body must not echo the 4 KB path"),
    Case("path_long_17k", "path", request(b"GET", b"/" + b"A" * 17000), _e("414", "431"),
         note="request line alone over 16 KiB: 431 (contract) or 414 URI Too Long"),
    Case("path_rank_with_query", "path",
         request(b"POST", b"/rank?debug=1", VALID_BODY), _e("200"), keeps_connection=True,
         check=check_valid_answer, note="a query string does not change the path"),

    # -- headers -----------------------------------------------------------------------------------
    Case("header_no_colon", "headers", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", _e("400")),
    Case("header_space_before_colon", "headers",
         b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", _e("400"),
         note="RFC 9112 5.1: MUST be rejected with 400 (request smuggling)"),
    Case("header_invalid_name", "headers",
         b"GET /health HTTP/1.1\r\nHost: x\r\nX(a): b\r\n\r\n", _e("400")),
    Case("header_nul_in_value", "headers",
         b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", _e("400")),
    Case("header_bare_cr_in_value", "headers",
         b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", _e("400")),
    Case("header_obs_fold", "headers",
         b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n", _e("200", "400"),
         note="RFC 9112 5.2: reject with 400 or unfold to a space"),
    Case("header_missing_host", "headers", request(b"GET", b"/health", host=False),
         _e("200", "400"), note="RFC 9112 3.2 says 400; the contract does not ask for Host"),
    Case("header_single_17k", "headers",
         request(b"GET", b"/health", headers=(b"X-Pad: " + b"a" * 17000,)), _e("431")),
    Case("header_many_20k", "headers",
         request(b"GET", b"/health", headers=tuple(b"X-Pad-%03d: %s" % (i, b"b" * 50)
                                                   for i in range(300))), _e("431"),
         note="300 headers, 20 KB in all"),
    Case("header_line_never_ends", "headers",
         b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"c" * 40000, _e("431"),
         note="40 KB of one header line without CRLF: the limit applies before the line ends"),
    Case("header_total_12k_ok", "headers",
         request(b"GET", b"/health", headers=tuple(b"X-Pad-%02d: %s" % (i, b"d" * 1000)
                                                   for i in range(12))), _e("200"),
         keeps_connection=True, note="under the 16 KiB limit: must be served"),
    Case("header_count_100_ok", "headers",
         request(b"GET", b"/health", headers=tuple(b"X-H%03d: v" % i for i in range(100))),
         _e("200"), keeps_connection=True,
         note="100 small headers (1.3 KB): the contract limits size, not count"),

    # -- framing: Content-Length and chunked ------------------------------------------------------
    Case("content_length_not_a_number", "framing",
         post_rank(b"{}").replace(b"Content-Length: 2", b"Content-Length: abc"), _e("400")),
    Case("content_length_negative", "framing",
         post_rank(b"{}").replace(b"Content-Length: 2", b"Content-Length: -2"), _e("400")),
    Case("content_length_conflicting", "framing",
         post_rank(VALID_BODY).replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n", 1),
         _e("400"), note="two different lengths: RFC 9112 6.3 says unrecoverable error"),
    Case("content_length_huge", "framing",
         post_rank(b"{}").replace(b"Content-Length: 2", b"Content-Length: 99999999999999999999"),
         _e("400", "413")),
    Case("content_length_shorter_than_body", "framing",
         post_rank(VALID_BODY).replace(b"Content-Length: %d" % len(VALID_BODY),
                                       b"Content-Length: 10"), _e("400"),
         note="10 bytes of body are not JSON; the rest is garbage and may end the connection"),
    Case("content_length_longer_than_body", "framing",
         post_rank(VALID_BODY).replace(b"Content-Length: %d" % len(VALID_BODY),
                                       b"Content-Length: 500"), _e("400", CLOSED), half_close=True,
         note="the client half-closes: the body can never complete"),
    Case("content_length_and_chunked", "framing",
         request(b"POST", b"/rank", chunked(VALID_BODY),
                 headers=(b"Transfer-Encoding: chunked", b"Content-Length: 4")), _e("400"),
         note="both framings at once: the classic request-smuggling vector"),
    Case("body_empty", "framing", post_rank(b""), _e("400"), keeps_connection=True),
    Case("body_missing_no_length", "framing",
         request(b"POST", b"/rank", headers=(b"Content-Type: application/json",)), _e("400"),
         keeps_connection=True, note="no Content-Length, no Transfer-Encoding: an empty body"),
    Case("body_exactly_64k", "framing", post_rank(_pad_to(VALID_BODY, 65536)), _e("200"),
         keeps_connection=True, check=check_valid_answer, note="65,536 bytes is not over 64 KiB"),
    Case("body_64k_plus_1", "framing", post_rank(_pad_to(VALID_BODY, 65537)), _e("413")),
    Case("body_100k", "framing", post_rank(_pad_to(VALID_BODY, 100_000)), _e("413")),
    Case("content_length_claims_70k", "framing",
         post_rank(b"{}").replace(b"Content-Length: 2", b"Content-Length: 70000"), _e("413"),
         note="the body never comes: 413 must follow from the header alone"),
    Case("chunked_valid", "framing",
         request(b"POST", b"/rank", chunked(VALID_BODY[:20], VALID_BODY[20:]),
                 headers=(b"Transfer-Encoding: chunked",), content_length=False), _e("200"),
         keeps_connection=True,
         check=check_valid_answer),
    Case("chunked_with_extension", "framing",
         request(b"POST", b"/rank",
                 b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (len(VALID_BODY), VALID_BODY),
                 headers=(b"Transfer-Encoding: chunked",), content_length=False), _e("200"),
         keeps_connection=True, check=check_valid_answer, note="chunk extensions are legal"),
    Case("chunked_over_64k", "framing",
         request(b"POST", b"/rank", chunked(VALID_BODY[:-1], *_big_chunks, b"}"),
                 headers=(b"Transfer-Encoding: chunked",), content_length=False), _e("413"),
         note="no Content-Length: the limit must hold while chunks accumulate"),
    Case("chunked_bad_size", "framing",
         request(b"POST", b"/rank", b"zz\r\n" + VALID_BODY + b"\r\n0\r\n\r\n",
                 headers=(b"Transfer-Encoding: chunked",), content_length=False), _e("400")),
    Case("chunked_size_overflow", "framing",
         request(b"POST", b"/rank", b"ffffffffffffffffffff\r\n" + VALID_BODY + b"\r\n0\r\n\r\n",
                 headers=(b"Transfer-Encoding: chunked",), content_length=False), _e("400", "413")),
    Case("chunked_missing_crlf", "framing",
         request(b"POST", b"/rank", b"%x\r\n%sXX0\r\n\r\n" % (len(VALID_BODY), VALID_BODY),
                 headers=(b"Transfer-Encoding: chunked",), content_length=False), _e("400")),
    Case("chunked_no_terminator", "framing",
         request(b"POST", b"/rank", b"%x\r\n%s\r\n" % (len(VALID_BODY), VALID_BODY),
                 headers=(b"Transfer-Encoding: chunked",), content_length=False),
         _e("400", CLOSED), half_close=True, note="the client half-closes before the last chunk"),
    Case("transfer_encoding_unknown", "framing",
         request(b"POST", b"/rank", VALID_BODY, headers=(b"Transfer-Encoding: gzip",),
                 content_length=False), _e("400"),
         note="RFC 9112 6.3: chunked not final -> 400 and close"),
    Case("expect_100_continue", "framing",
         post_rank(VALID_BODY, headers=(b"Expect: 100-continue",)), _e("200"),
         keeps_connection=True, check=check_valid_answer,
         note="the body is sent at once; a 100 Continue before the 200 is allowed"),
    Case("http10_request", "framing",
         request(b"POST", b"/rank", VALID_BODY, version=b"HTTP/1.0"), _e("200"),
         check=check_valid_answer, note="HTTP/1.0 without keep-alive: answered, then closed"),
    Case("pipelined_bad_then_good", "framing", _rank(b"{not json") + VALID_REQUEST, _e("400"),
         keeps_connection=True, followups=("200",),
         note="an error in a pipeline must not break the next request"),
    Case("valid_request_then_half_close", "framing", VALID_REQUEST, _e("200"), half_close=True,
         check=check_valid_answer, note="a client may shut down its sending side and still read"),

    # -- JSON syntax ------------------------------------------------------------------------------
    _json_case("json_truncated", '{"user_id": 7,'),
    _json_case("json_trailing_garbage", VALID_BODY + b"x"),
    _json_case("json_two_documents", VALID_BODY + VALID_BODY),
    _json_case("json_single_quotes", "{'user_id': 7, 'item_ids': [12]}"),
    _json_case("json_comment", '{/* c */ "user_id": 7, "item_ids": [12]}'),
    _json_case("json_trailing_comma", '{"user_id": 7, "item_ids": [12, 99,],}'),
    _json_case("json_invalid_utf8", b'{"user_id": 7, "item_ids": [12], "x": "\xff\xfe"}'),
    _json_case("json_overlong_utf8", b'{"user_id": 7, "item_ids": [12], "x": "\xc0\xaf"}'),
    _json_case("json_raw_control_char", b'{"user_id": 7, "item_ids": [12], "x": "a\x01b"}'),
    _json_case("json_nan_literal", '{"user_id": NaN, "item_ids": [12]}'),
    _json_case("json_infinity_literal", '{"user_id": Infinity, "item_ids": [12]}'),
    _json_case("json_deep_array_30000", _deep_array, note="30,000 nested arrays (60 KB)"),
    Case("json_deep_object_10000_unknown_field", "json", _rank(_deep_object), _e("200", "400"),
         keeps_connection=True,
         note="10,000 nested objects (60 KB) in an ignored field: skip them without exhausting "
              "the stack (200) or refuse the depth (400)"),
    _json_case("json_deep_object_in_user_id", _deep_user, note="10,000 nested objects as user_id"),
    Case("json_nested_1000_unknown_field", "json", _rank(_nested_1000), _e("200", "400"),
         keeps_connection=True,
         note="depth 1000 in an ignored field: parse it (200) or refuse the depth (400)"),
    _json_case("json_top_level_array", "[7, [12]]"),
    _json_case("json_top_level_string", '"user_id"'),
    _json_case("json_top_level_null", "null"),
    _json_case("json_top_level_number", "7"),
    _json_case("json_empty_object", "{}"),
    _json_case("json_garbage_60k", b"B" * 60000, note="the error must not echo the 60 KB body"),
    Case("json_duplicate_key", "json", _rank('{"user_id": "x", "user_id": 7, "item_ids": [12]}'),
         _e("200", "400"), keeps_connection=True,
         note="RFC 8259 leaves duplicate names undefined: last wins (200) or refuse (400)"),
    _json_case("json_escaped_key", '{"user\\u005fid": 7, "item_ids": [12, 99, 3], "top_k": 2}',
               status="200", check=check_valid_answer,
               note="a key written with a \\u escape is the same key"),
    _json_case("json_unknown_field_60k", b'{"user_id": 7, "item_ids": [12, 99, 3], "top_k": 2, '
               b'"pad": "' + b"p" * 60000 + b'"}', status="200", check=check_valid_answer),

    # -- fields -----------------------------------------------------------------------------------
    _field_case("user_id_missing", '{"item_ids": [12]}'),
    _field_case("user_id_string", '{"user_id": "7", "item_ids": [12]}'),
    _field_case("user_id_float", '{"user_id": 7.0, "item_ids": [12]}'),
    _field_case("user_id_fraction", '{"user_id": 7.5, "item_ids": [12]}'),
    _field_case("user_id_exponent", '{"user_id": 7e0, "item_ids": [12]}'),
    _field_case("user_id_bool", '{"user_id": true, "item_ids": [12]}'),
    _field_case("user_id_null", '{"user_id": null, "item_ids": [12]}'),
    _field_case("user_id_list", '{"user_id": [7], "item_ids": [12]}'),
    _field_case("user_id_object", '{"user_id": {"id": 7}, "item_ids": [12]}'),
    _field_case("user_id_int64_max_plus_1", f'{{"user_id": {INT64_MAX + 1}, "item_ids": [12]}}'),
    _field_case("user_id_int64_min_minus_1", f'{{"user_id": {INT64_MIN - 1}, "item_ids": [12]}}'),
    _field_case("user_id_1e400", '{"user_id": 1e400, "item_ids": [12]}'),
    _field_case("user_id_300_digits", '{"user_id": 1' + "0" * 300 + ', "item_ids": [12]}'),
    _field_case("user_id_sql", '{"user_id": "7; DROP TABLE users; --", "item_ids": [12]}'),
    _field_case("user_id_huge_string", '{"user_id": "' + "U" * 50000 + '", "item_ids": [12]}',
                note="the error must not echo the 50 KB string"),
    _field_case("user_id_int64_max", f'{{"user_id": {INT64_MAX}, "item_ids": [12]}}', "404"),
    _field_case("user_id_int64_min", f'{{"user_id": {INT64_MIN}, "item_ids": [12]}}', "404"),
    _field_case("user_id_zero", '{"user_id": 0, "item_ids": [12]}', "404"),
    _field_case("user_id_negative", '{"user_id": -1, "item_ids": [12]}', "404"),
    _field_case("user_id_unknown", '{"user_id": 999999999, "item_ids": [12]}', "404"),
    _field_case("item_ids_missing", '{"user_id": 7}'),
    _field_case("item_ids_empty", '{"user_id": 7, "item_ids": []}'),
    _field_case("item_ids_1001", f'{{"user_id": 7, "item_ids": [{_ids_1001}]}}'),
    _field_case("item_ids_1000", f'{{"user_id": 7, "item_ids": [{_ids_1000}], "top_k": 1000}}',
                "200", check=lambda b: _items(b, user_id=7, count=1000)),
    _field_case("item_ids_not_list", '{"user_id": 7, "item_ids": 12}'),
    _field_case("item_ids_string", '{"user_id": 7, "item_ids": "12,99"}'),
    _field_case("item_ids_null", '{"user_id": 7, "item_ids": null}'),
    _field_case("item_ids_object", '{"user_id": 7, "item_ids": {"0": 12}}'),
    _field_case("item_id_string", '{"user_id": 7, "item_ids": [12, "99"]}'),
    _field_case("item_id_float", '{"user_id": 7, "item_ids": [12, 99.0]}'),
    _field_case("item_id_null", '{"user_id": 7, "item_ids": [12, null]}'),
    _field_case("item_id_bool", '{"user_id": 7, "item_ids": [12, true]}'),
    _field_case("item_id_nested_list", '{"user_id": 7, "item_ids": [[12]]}'),
    _field_case("item_id_int64_max_plus_1", f'{{"user_id": 7, "item_ids": [12, {INT64_MAX + 1}]}}'),
    _field_case("item_id_sql", '{"user_id": 7, "item_ids": ["1) OR (1=1"]}'),
    _field_case("item_ids_duplicates", '{"user_id": 7, "item_ids": [12, 12, 99, 12, 99]}', "200",
                check=lambda b: _items(b, user_id=7, ids=[12, 99]),
                note="duplicates are scored once"),
    _field_case("item_ids_unknown_only", f'{{"user_id": 7, "item_ids": [0, -5, 999999999, '
                f'{INT64_MAX}, {INT64_MIN}]}}', "200",
                check=lambda b: _items(b, user_id=7, count=0),
                note="valid int64 ids that do not exist: left out"),
    _field_case("top_k_missing", f'{{"user_id": 7, "item_ids": [{",".join(map(str, range(1, 13)))}]}}',
                "200", check=lambda b: _items(b, user_id=7, count=10), note="default 10"),
    _field_case("top_k_zero", '{"user_id": 7, "item_ids": [12], "top_k": 0}'),
    _field_case("top_k_negative", '{"user_id": 7, "item_ids": [12], "top_k": -1}'),
    _field_case("top_k_1001", '{"user_id": 7, "item_ids": [12], "top_k": 1001}'),
    _field_case("top_k_huge", '{"user_id": 7, "item_ids": [12], "top_k": 1' + "0" * 30 + "}"),
    _field_case("top_k_float", '{"user_id": 7, "item_ids": [12], "top_k": 1.5}'),
    _field_case("top_k_string", '{"user_id": 7, "item_ids": [12], "top_k": "5"}'),
    _field_case("top_k_bool", '{"user_id": 7, "item_ids": [12], "top_k": true}'),
    _field_case("unknown_field_sql", '{"user_id": 7, "item_ids": [12, 99, 3], "top_k": 2, '
                '"q": "\'; DROP TABLE items; --"}', "200", check=check_valid_answer),
)


def by_name() -> dict[str, Case]:
    return {case.name: case for case in CASES}


assert len(by_name()) == len(CASES), "case names must be unique"
