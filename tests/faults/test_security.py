"""Issue 7, item 7: security.

- loopback bind by default: started without --host, the server listens on 127.0.0.1/::1 only;
- optional API key (`--api-key KEY` or env RANKBENCH_API_KEY; header X-API-Key). Behaviour these
  tests pin down (proposed for docs/contract.md):
    * off unless configured (benchmarks run without it);
    * when on, every route except GET /health requires `X-API-Key: KEY` (header name
      case-insensitive, value compared in constant time). Missing or wrong -> 401 with body exactly
      {"error": "missing or invalid API key"}, Content-Type application/json, connection kept alive;
    * the key is checked before anything else about a readable request: no key + unknown path, wrong
      method or bad JSON is 401, not 404/405/400 (unauthenticated clients learn nothing else);
    * the 401 body never echoes the key that was sent;
    * `--api-key ""` is refused at start (exit non-zero, a clear line on stderr saying the key is
      empty, no traceback) rather than accepting an empty header;
- every SQL value bound as a parameter: with log_statement = 'all' on the suite's cluster, the
  statements the server runs for distinctive ids hold `$1` placeholders and never the ids
  themselves, which appear only as bound parameters.
  (Short, escaped excerpts in error bodies are checked on every error answer of the corpus.)
"""
from __future__ import annotations

import subprocess
import time

import orjson

from rankbench.servers import SERVERS

from . import servers
from .checks import error_problems
from .corpus import VALID_BODY, VALID_REQUEST, check_valid_answer
from .rawhttp import Connection, exchange, post_rank, request

KEY = "s3cr3t-rankbench-key-0123456789"
UNAUTHORIZED = {"error": "missing or invalid API key"}


def _check_401(answer, sent: bytes, what: str) -> list[str]:
    if answer.label != "401":
        return [f"{what}: {answer.label}, expected 401 ({answer.raw[:200]!r})"]
    problems = [f"{what}: {p}" for p in error_problems(answer, sent)]
    try:
        if orjson.loads(answer.body) != UNAUTHORIZED:
            problems.append(f"{what}: body {answer.body[:120]!r}, expected {UNAUTHORIZED}")
    except orjson.JSONDecodeError:
        pass
    if KEY[5:].encode() in answer.body:
        problems.append(f"{what}: the 401 body echoes the key")
    return problems


def test_binds_loopback_by_default(checked_server_name, db):
    server = servers.start(checked_server_name, db.url, without_host=True)
    try:
        addresses = servers.tree_listen_addresses(server.process.pid)
    finally:
        server.stop()
    assert addresses, f"{checked_server_name}: no listening socket found"
    assert addresses <= {"127.0.0.1", "::1"}, \
        f"{checked_server_name} listens on {sorted(addresses)} without --host (loopback expected)"


def _api_key_problems(server) -> list[str]:
    host, port = server.host, server.port
    problems = []
    # /health stays open: the harness and orchestrators probe it.
    health = exchange(host, port, request(b"GET", b"/health"))
    if health.label != "200":
        problems.append(f"GET /health without a key: {health.label}")
    conn = Connection(host, port)
    try:
        conn.send(VALID_REQUEST)
        problems += _check_401(conn.read_response(), VALID_REQUEST, "POST /rank without a key")
        # Same connection, now with the key: a 401 must not end a healthy connection.
        good = post_rank(VALID_BODY, headers=(b"X-API-Key: " + KEY.encode(),))
        conn.send(good)
        answer = conn.read_response()
        if answer.label != "200" or check_valid_answer(answer.body):
            problems.append(f"POST /rank with the key after a 401 on the same connection: "
                            f"{answer.label} {answer.raw[:200]!r}")
    finally:
        conn.close()
    lower = post_rank(VALID_BODY, headers=(b"x-api-key: " + KEY.encode(),))
    if exchange(host, port, lower).label != "200":
        problems.append("header name `x-api-key` (lower case) with the right key was refused")
    wrong_keys = {"wrong key, same length": "wrong" + KEY[5:], "prefix of the key": KEY[:-1],
                  "key plus a byte": KEY + "x", "empty value": "",
                  "key with another case": KEY.upper()}
    for what, value in wrong_keys.items():
        sent = post_rank(VALID_BODY, headers=(b"X-API-Key: " + value.encode(),))
        problems += _check_401(exchange(host, port, sent), sent, what)
    guarded = {"GET /stats": request(b"GET", b"/stats"),
               "POST /stats/reset": request(b"POST", b"/stats/reset", b""),
               "GET /nope (unknown path)": request(b"GET", b"/nope"),
               "GET /rank (wrong method)": request(b"GET", b"/rank"),
               "POST /rank with bad JSON": post_rank(b"{not json")}
    for what, sent in guarded.items():
        problems += _check_401(exchange(host, port, sent), sent, f"{what} without a key")
    return problems


def test_api_key_flag(checked_server_name, db):
    server = servers.start(checked_server_name, db.url, extra=("--api-key", KEY))
    try:
        problems = _api_key_problems(server)
    finally:
        server.stop()
    assert not problems, f"{checked_server_name} --api-key: " + "; ".join(problems)


def test_api_key_from_environment(checked_server_name, db, monkeypatch):
    monkeypatch.setenv("RANKBENCH_API_KEY", KEY)
    server = servers.start(checked_server_name, db.url)
    try:
        without = exchange(server.host, server.port, VALID_REQUEST)
        with_key = exchange(server.host, server.port,
                            post_rank(VALID_BODY, headers=(b"X-API-Key: " + KEY.encode(),)))
    finally:
        server.stop()
    problems = _check_401(without, VALID_REQUEST, "RANKBENCH_API_KEY set, no key sent")
    if with_key.label != "200":
        problems.append(f"RANKBENCH_API_KEY set, right key sent: {with_key.label}")
    assert not problems, f"{checked_server_name}: " + "; ".join(problems)


def test_api_key_off_by_default(server_name, server):
    answer = exchange(server.host, server.port, VALID_REQUEST)
    assert answer.label == "200", \
        f"{server_name} without --api-key refused a request without a key: {answer.raw[:200]!r}"


def test_empty_api_key_refused(checked_server_name, db):
    spec = SERVERS[checked_server_name]
    command = spec.command(port=servers.free_port(), dsn=db.url) + ["--api-key", ""]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{checked_server_name} --api-key '' started serving (an empty key "
                             f"must be refused at start)") from None
    stderr = done.stderr.lower()
    assert done.returncode != 0, f"{checked_server_name} --api-key '' exited 0"
    assert "unrecognized" not in stderr and "unexpected argument" not in stderr, \
        f"{checked_server_name} does not know --api-key yet: {done.stderr.strip()[-300:]!r}"
    assert "empty" in stderr and "traceback" not in stderr, \
        (f"{checked_server_name} --api-key '': expected a clear line saying the key is empty, "
         f"got {done.stderr.strip()[-500:]!r}")


def test_sql_values_are_bound_parameters(server_name, server, db):
    """The ids of a request reach PostgreSQL as bound parameters, never inside the SQL text."""
    def psql(sql: str) -> None:
        from rankbench import pg
        subprocess.run([str(pg.pg_bindir() / "psql"), "-X", "-q", db.url, "-c", sql],
                       check=True, capture_output=True, timeout=30)

    user_id, item_ids, unknown_user = 123457, [98761, 98762, 98763], 987653
    log = db.log_file
    psql("ALTER SYSTEM SET log_statement = 'all'")
    psql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    start = log.stat().st_size
    try:
        answers = [exchange(server.host, server.port, post_rank(orjson.dumps(
            {"user_id": user, "item_ids": item_ids, "top_k": 3}))) for user in (user_id, unknown_user)]
        time.sleep(0.5)
    finally:
        psql("ALTER SYSTEM RESET log_statement")
        psql("SELECT pg_reload_conf()")
    with open(log, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", "replace")
    assert [a.label for a in answers] == ["200", "404"], [a.raw[:200] for a in answers]
    # The text after "LOG:" only: the line prefix holds a pid and a time that could contain an id.
    statement_lines = [line.split("LOG:", 1)[1] for line in text.splitlines()
                       if "LOG:" in line and ("users" in line or "items" in line)]
    detail_lines = [line.split("DETAIL:", 1)[1] for line in text.splitlines()
                    if "DETAIL:" in line and "parameters" in line]
    values = [str(user_id), str(unknown_user)] + [str(i) for i in item_ids]
    assert statement_lines, f"no statement of {server_name} was logged:\n{text[-2000:]}"
    literal = [line for line in statement_lines if any(v in line for v in values)]
    assert not literal, f"{server_name} put request values into SQL text: {literal[:3]}"
    assert all("$1" in line for line in statement_lines), \
        f"{server_name}: statements without a $1 placeholder: {statement_lines[:3]}"
    bound = " ".join(detail_lines)
    assert all(v in bound for v in values), \
        (f"{server_name}: the request's ids were not seen as bound parameters "
         f"(DETAIL lines: {detail_lines[:4]})")
