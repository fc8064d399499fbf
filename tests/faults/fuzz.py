"""A seeded mutator over valid requests (issue 7, item 2).

Case `i` of seed `s` is built from `random.Random(s * 1_000_003 + i)` alone, so any failing case is
reproduced by its index (`mutated_request(seed, i)`), without replaying the ones before it.

Two kinds of case, alternating:
- json: a valid request whose JSON body has one to three fields replaced, added or removed with
  values chosen to hurt (int64 edges, floats, huge numbers, strings, nesting, null, booleans), then
  re-framed with a correct Content-Length: the HTTP layer is fine, validation is exercised;
- bytes: a valid request (plain, chunked or pipelined) with one to four byte-level mutations
  (bit flips, interesting bytes and tokens inserted, ranges deleted, duplicated or truncated): the
  HTTP parser and framing are exercised.
"""
from __future__ import annotations

import random

import orjson

from .rawhttp import chunked, post_rank, request

FIELDS = ("user_id", "item_ids", "top_k")

INTERESTING_VALUES: tuple[bytes, ...] = (
    b"0", b"-1", b"1", b"7", b"200000", b"200001", b"9223372036854775807",
    b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
    b"18446744073709551616", b"1" + b"0" * 40, b"1.0", b"1.5", b"-0", b"-0.0", b"1e2", b"1E400",
    b"-1e-400", b"NaN", b"Infinity", b"-Infinity", b"true", b"false", b"null", b'""', b'"7"',
    b'"\\u0000"', b'"\\ud800"', b'"' + b"x" * 3000 + b'"', b"[]", b"{}", b"[7]", b"[[7]]",
    b"[" * 200 + b"]" * 200, b'{"user_id": 7}', b"[1,2,3]", b"[" + b",".join([b"5"] * 1001) + b"]",
    b"[" + b",".join([b"12"] * 1000) + b"]", b"[null]", b"[1.0]", b'["1"]', b"[true]",
    b"[9223372036854775808]", b"[-9223372036854775809]", b"1001", b"1000",
)

INTERESTING_BYTES = b"\x00\xff\r\n :\"{}[],-0\t\\"

INTERESTING_TOKENS: tuple[bytes, ...] = (
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b"Content-Length: 5\r\n",
    b"Content-Length: 99999\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
    b"Expect: 100-continue\r\n", b"Host: y\r\n", b" HTTP/1.0", b"\xff\xfe", b"\xc0\xaf", b"%00",
    b"%", b"?", b"#", b"/../", b'"', b"\\", b"\\u", b"1e999", b"-", b"99999999999999999999",
    b"null", b"[", b"{", b"]", b"}", b",", b":", b"0\r\n\r\n", b"ffffffff\r\n",
)

BASE_BODIES: tuple[dict, ...] = (
    {"user_id": 7, "item_ids": [12, 99, 3], "top_k": 2},
    {"user_id": 123, "item_ids": list(range(1, 40)), "top_k": 5},
    {"user_id": 200000, "item_ids": [100000, 1, 50000]},
    {"user_id": 1, "item_ids": [42], "top_k": 1000, "extra": {"a": [1, 2]}},
)


def _body_text(body: dict) -> bytes:
    return orjson.dumps(body)


def json_case(rng: random.Random) -> bytes:
    """A correctly framed POST /rank whose JSON fields were mutated at the text level."""
    body = dict(rng.choice(BASE_BODIES))
    parts: dict[str, bytes] = {key: orjson.dumps(value) for key, value in body.items()}
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        key = rng.choice(FIELDS + ("zz", "user_id"))
        if action < 0.7:
            parts[key] = rng.choice(INTERESTING_VALUES)
        elif action < 0.85:
            parts.pop(key, None)
        else:
            # an element of item_ids replaced inside an otherwise valid list
            items = list(body.get("item_ids", [1]))
            items[rng.randrange(len(items))] = 0
            raw = orjson.dumps(items)
            at = rng.randrange(1, len(raw))
            parts["item_ids"] = raw[:at] + rng.choice(INTERESTING_VALUES)[:40] + raw[at:]
    text = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in parts.items()) + b"}"
    return post_rank(text)


def _base_request(rng: random.Random) -> bytes:
    body = _body_text(rng.choice(BASE_BODIES))
    shape = rng.random()
    if shape < 0.6:
        return post_rank(body)
    if shape < 0.8:
        cut = rng.randrange(1, len(body))
        return request(b"POST", b"/rank", chunked(body[:cut], body[cut:]),
                       headers=(b"Transfer-Encoding: chunked",), content_length=False)
    if shape < 0.9:
        return post_rank(body) + post_rank(_body_text(rng.choice(BASE_BODIES)))
    return request(rng.choice((b"GET", b"POST")), rng.choice((b"/health", b"/stats", b"/rank")))


def byte_case(rng: random.Random) -> bytes:
    data = bytearray(_base_request(rng))
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        op = rng.random()
        at = rng.randrange(len(data))
        if op < 0.2:
            data[at] ^= 1 << rng.randrange(8)
        elif op < 0.4:
            data[at] = rng.choice(INTERESTING_BYTES)
        elif op < 0.6:
            data[at:at] = rng.choice(INTERESTING_TOKENS)
        elif op < 0.75:
            del data[at:at + rng.randint(1, 16)]
        elif op < 0.9:
            length = rng.randint(1, 64)
            data[at:at] = data[at:at + length]
        else:
            del data[at:]
    return bytes(data)


def mutated_request(seed: int, index: int) -> tuple[str, bytes]:
    """(kind, request bytes) of case `index`."""
    rng = random.Random(seed * 1_000_003 + index)
    if index % 2 == 0:
        return "json", json_case(rng)
    return "bytes", byte_case(rng)
