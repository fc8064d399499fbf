"""Checks shared by the fault tests: what every error answer of the contract must look like."""
from __future__ import annotations

import orjson

from .profile import MAX_ECHO_BYTES, MAX_ERROR_BODY_BYTES
from .rawhttp import Response


def longest_echo_over(body: bytes, sent: bytes, limit: int = MAX_ECHO_BYTES) -> bool:
    """True if `body` (raw, or its JSON-decoded error text) repeats more than `limit` consecutive
    bytes of what was sent."""
    texts = [body]
    try:
        data = orjson.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            texts.append(data["error"].encode("utf-8", "surrogatepass"))
    except orjson.JSONDecodeError:
        pass
    window = limit + 1
    for text in texts:
        for start in range(0, len(text) - window + 1):
            if text[start:start + window] in sent:
                return True
    return False


def error_problems(response: Response, sent: bytes) -> list[str]:
    """Problems with a 4xx/5xx answer: it must be `{"error": "<non-empty text>"}` served as JSON,
    short, and echo at most a short excerpt of the input."""
    problems = []
    content_type = response.header("content-type") or ""
    if not content_type.lower().startswith("application/json"):
        problems.append(f"Content-Type {content_type or '(none)'!r}, expected application/json")
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        problems.append(f"error body is not JSON: {response.body[:120]!r}")
    else:
        if not isinstance(data, dict) or not isinstance(data.get("error"), str) \
                or not data["error"].strip():
            problems.append(f'error body is not {{"error": "<text>"}}: {response.body[:120]!r}')
    if len(response.body) > MAX_ERROR_BODY_BYTES:
        problems.append(f"error body is {len(response.body)} bytes (limit {MAX_ERROR_BODY_BYTES})")
    if longest_echo_over(response.body, sent):
        problems.append(f"error body echoes more than {MAX_ECHO_BYTES} bytes of the request")
    return problems
