"""Database outages (503 JSON, /health, recovery without a restart) and graceful shutdown.

These start their own server, talking to PostgreSQL through a proxy the test can break
(conformance_dbproxy.py), so the shared cluster is never touched."""
from __future__ import annotations

import signal
import threading
import time

import pytest
from conformance_dbproxy import DbProxy, upstream_of
from conformance_http import Connection, assert_json_error, rank_body
from conformance_servers import start_server

RECOVERY_TIMEOUT_S = 20.0     # generous: this is a hang detector, not a performance target
SHUTDOWN_LIMIT_S = 5.0        # the contract's bound

@pytest.fixture
def proxy(dsn):
    upstream = upstream_of(dsn)
    if upstream is None:
        pytest.skip(f"database outage tests need a TCP DSN, got {dsn!r}")
    proxy = DbProxy(upstream)
    yield proxy
    proxy.close()

def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is True:
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not within {timeout:.0f} s (last: {last})")

def test_database_outage_gives_503_and_recovers(server_case, dsn, model_dir, proxy):
    proxy.down()
    server = start_server(server_case.spec, server_case.workers, proxy.dsn(dsn), model_dir,
                          wait_for="answering")
    try:
        pid = server.process.pid
        # Started without a database: it answers, with 503, and names the problem.
        with server.connect() as conn:
            assert_json_error(conn.request("GET", "/health"), 503)
            assert_json_error(conn.rank(1, [1, 2], 2), 503)
            # A 503 does not close a healthy connection.
            assert_json_error(conn.rank(1, [1, 2], 2), 503)
            assert not conn.peer_closed

        proxy.up()

        def healthy():
            with server.connect() as conn:
                response = conn.request("GET", "/health")
                return response.status == 200 or response

        _wait_for(healthy, RECOVERY_TIMEOUT_S, "/health 200 after the database came up")
        with server.connect() as conn:
            response = conn.rank(1, [1, 2], 2)
            assert response.status == 200, response

        # The database goes away while the server runs...
        with server.connect() as kept:
            assert kept.rank(2, [3, 4], 2).status == 200
            proxy.down()
            statuses = {kept.rank(2, [3, 4], 2).status for _ in range(3)}
            assert statuses == {503}, statuses
            with server.connect() as conn:
                assert_json_error(conn.request("GET", "/health"), 503)
            # ...and comes back: the same connection recovers, no restart.
            proxy.up()

            def ranked():
                response = kept.rank(2, [3, 4], 2)
                return response.status == 200 or response

            _wait_for(ranked, RECOVERY_TIMEOUT_S, "POST /rank 200 after the database came back")
        assert server.process.poll() is None and server.process.pid == pid
        _wait_for(healthy, RECOVERY_TIMEOUT_S, "/health 200 after the database came back")
    finally:
        server.stop()

def test_sigterm_finishes_in_flight_requests_and_exits_0(server_case, dsn, model_dir, proxy):
    server = start_server(server_case.spec, server_case.workers, proxy.dsn(dsn), model_dir)
    try:
        with server.connect() as idle, server.connect() as busy:
            assert idle.request("GET", "/health").status == 200
            assert busy.rank(1, [1], 1).status == 200
            proxy.hold(0.8)                    # the next query waits in the proxy
            busy.send(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(rank_body(3, [1, 2, 3], 3)), rank_body(3, [1, 2, 3], 3)))
            assert proxy.query_seen.wait(10), "the request never reached the database"
            sent_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            response = busy.read_response(timeout=SHUTDOWN_LIMIT_S)
            assert response.status == 200, response
            assert len(response.json()["items"]) == 3
            assert busy.closed_by_server(SHUTDOWN_LIMIT_S)
            assert idle.closed_by_server(SHUTDOWN_LIMIT_S)
            proxy.up()
        remaining = SHUTDOWN_LIMIT_S - (time.monotonic() - sent_at)
        try:
            code = server.process.wait(max(0.1, remaining))
        except Exception:
            pytest.fail(f"{server.name} still running {SHUTDOWN_LIMIT_S:.0f} s after SIGTERM:\n"
                        f"{server.stderr_tail()}")
        assert code == 0, f"exit code {code}:\n{server.stderr_tail()}"
        with pytest.raises(OSError):
            Connection(server.host, server.port, timeout=2).close()
    finally:
        server.stop()

def test_sigterm_while_idle_exits_0_quickly(server_case, dsn, model_dir):
    server = start_server(server_case.spec, server_case.workers, dsn, model_dir)
    try:
        conns = [server.connect() for _ in range(4)]       # idle keep-alive connections
        for conn in conns:
            assert conn.request("GET", "/health").status == 200
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(SHUTDOWN_LIMIT_S + 5)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit code {code}:\n{server.stderr_tail()}"
        assert elapsed < SHUTDOWN_LIMIT_S, f"took {elapsed:.1f} s to stop"
        for conn in conns:
            conn.close()
    finally:
        server.stop()

def test_concurrent_clients_during_shutdown_get_answers_or_clean_closes(server_case, dsn, model_dir):
    """Under load, SIGTERM must not produce broken responses: every request either gets a complete
    response or its connection is closed/refused cleanly; no 5xx."""
    server = start_server(server_case.spec, server_case.workers, dsn, model_dir)
    statuses: list[int] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                with server.connect(timeout=5) as conn:
                    for _ in range(20):
                        statuses.append(conn.rank(5, [1, 2, 3], 3).status)
            except (OSError, ConnectionError):
                if server.process.poll() is not None:
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(SHUTDOWN_LIMIT_S + 5)
        stop.set()
        for t in threads:
            t.join(10)
        assert code == 0, server.stderr_tail()
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
    finally:
        stop.set()
        server.stop()
