"""Unit tests of py_servers internals that need neither a socket server nor a database: request
validation, top-k encoding, the shared stage histograms, response framing, the per-connection FIFO,
the pool split and the SO_REUSEPORT guard. (The HTTP behaviour is covered by tests/conformance.)"""
from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from py_servers.app import BadRequest, features_to_input, parse_rank, top_k_body
from py_servers.http import HttpProtocol, ResponseHead
from py_servers.main import Settings, bind_sockets
from py_servers.stats import STAGES, SharedStats


# -- validation -----------------------------------------------------------------------------------
def test_parse_rank_valid_and_default_top_k():
    assert parse_rank(b'{"user_id": 7, "item_ids": [1, 2, 2], "x": null}') == (7, [1, 2, 2], 10)
    assert parse_rank(b'{"user_id": -1, "item_ids": [9223372036854775807], "top_k": 1000}') == \
        (-1, [9223372036854775807], 1000)


@pytest.mark.parametrize("body,field", [
    (b"nope", "JSON"), (b"[]", "object"), (b"{}", "user_id"),
    (b'{"user_id": true, "item_ids": [1]}', "user_id"),
    (b'{"user_id": 1.0, "item_ids": [1]}', "user_id"),
    (b'{"user_id": 9223372036854775808, "item_ids": [1]}', "user_id"),
    (b'{"user_id": 1}', "item_ids"), (b'{"user_id": 1, "item_ids": {}}', "item_ids"),
    (b'{"user_id": 1, "item_ids": []}', "item_ids"),
    (b'{"user_id": 1, "item_ids": [1, false]}', "item_ids[1]"),
    (b'{"user_id": 1, "item_ids": [1, 2, 18446744073709551615]}', "item_ids[2]"),
    (b'{"user_id": 1, "item_ids": [1], "top_k": 0}', "top_k"),
    (b'{"user_id": 1, "item_ids": [1], "top_k": null}', "top_k"),
    (b'{"user_id": 1, "item_ids": [1], "top_k": false}', "top_k"),
])
def test_parse_rank_rejects_naming_the_field(body, field):
    with pytest.raises(BadRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_rank(body)


def test_parse_rank_rejects_1001_items():
    with pytest.raises(BadRequest, match="item_ids"):
        parse_rank(json.dumps({"user_id": 1, "item_ids": list(range(1001))}).encode())


# -- pre and post stages --------------------------------------------------------------------------
def test_features_to_input_concatenates_user_then_item():
    user = [float(i) for i in range(30)]
    rows = [(5, [100.0 + i for i in range(10)]), (3, [200.0 + i for i in range(10)])]
    x, ids = features_to_input(user, rows)
    assert x.dtype == np.float32 and x.shape == (2, 40) and x.flags.c_contiguous
    assert ids == [5, 3]
    assert x[1, 0] == 0.0 and x[1, 29] == 29.0 and x[1, 30] == 200.0 and x[0, 39] == 109.0


def test_top_k_body_orders_by_score_then_id_and_truncates():
    ids = [9, 4, 7, 1, 3]
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9], dtype=np.float32)
    body = json.loads(top_k_body(42, ids, scores, 4))
    assert body["user_id"] == 42
    assert [item["id"] for item in body["items"]] == [3, 4, 7, 9]
    assert body["items"][0]["score"] == pytest.approx(0.9)


def _score_texts(body: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb'"score":([^,}]+)[,}]', body)]


def test_scores_are_written_in_their_shortest_float32_form():
    body = top_k_body(1, [1, 2, 3], np.array([0.1, 0.0, 1 / 3], dtype=np.float32), 3)
    assert body == b'{"user_id":1,"items":[{"id":3,"score":0.33333334},{"id":1,"score":0.1},' \
                   b'{"id":2,"score":0.0}]}'
    # Many values: each text is numpy's shortest unique form of that float32 and reads back to it.
    scores = np.random.default_rng(9).uniform(0.001, 0.999, 1000).astype(np.float32)
    ids = list(range(1000))
    texts = _score_texts(top_k_body(1, ids, scores, 1000))
    expected = sorted(scores.tolist(), reverse=True)
    assert len(texts) == 1000
    for text, value in zip(texts, expected):
        assert text == np.format_float_positional(np.float32(value), unique=True)
        assert np.float32(text) == np.float32(value)


@pytest.mark.parametrize("backend_name", ["torch", "onnx", "candle", "none"])
def test_every_backend_output_is_written_in_float32_form(backend_name, model_dir):
    from py_servers.backends import load_backend

    if backend_name == "candle":
        pytest.importorskip("rankbench_candle", reason="the extension is built by `make build`")
    backend = load_backend(backend_name, model_dir)
    x = np.random.default_rng(4).standard_normal((50, 40), dtype=np.float32)
    scores = backend.infer(x)
    texts = _score_texts(top_k_body(1, list(range(50)), scores, 50))
    assert sorted(map(np.float32, texts), reverse=True) == sorted(scores.tolist(), reverse=True)
    assert all(text == np.format_float_positional(np.float32(text), unique=True) or
               text == "0.0" for text in texts)


# -- stage histograms -----------------------------------------------------------------------------
def test_percentiles_within_one_percent_of_exact():
    values = (np.random.default_rng(3).lognormal(11, 1.2, 50_000)).astype(np.int64) + 1
    stats = SharedStats(1)
    recorder = stats.recorder(0)
    for v in values.tolist():
        recorder.record_request(False, (v, v, None, v, v, v))
    db = stats.snapshot()["stages"]["db"]
    assert db["count"] == len(values)
    assert db["sum_us"] == pytest.approx(values.sum() / 1000, rel=1e-9)
    assert db["max_us"] == pytest.approx(values.max() / 1000)
    for key, q in (("p50_us", 50), ("p90_us", 90), ("p99_us", 99)):
        exact = np.percentile(values, q, method="inverted_cdf") / 1000
        assert db[key] == pytest.approx(exact, rel=0.01), key
    assert stats.snapshot()["stages"]["pre"]["count"] == 0


def test_workers_merge_and_reset_by_epoch():
    stats = SharedStats(2)
    a, b = stats.recorder(0), stats.recorder(1)
    for _ in range(3):
        a.record_request(False, (1000,) * len(STAGES))
    b.record_request(True)
    b.record_request(False, (5000,) * len(STAGES))
    snap = stats.snapshot()
    assert (snap["requests"], snap["errors"]) == (5, 1)
    assert snap["stages"]["total"]["count"] == 4 and snap["stages"]["total"]["max_us"] == 5.0
    assert [w["requests"] for w in snap["per_worker"]] == [3, 2]

    stats.reset()                       # by any worker: b's slice is stale until b writes again
    snap = stats.snapshot()
    assert snap["requests"] == 0 and snap["stages"]["total"]["count"] == 0
    b.record_request(False, (2000,) * len(STAGES))
    snap = stats.snapshot()
    assert snap["requests"] == 1 and snap["stages"]["total"]["max_us"] == 2.0


def test_timers_off_still_counts():
    stats = SharedStats(1)
    recorder = stats.recorder(0, timers=False)
    assert recorder.timers is False
    recorder.record_request(False, None)
    assert stats.snapshot()["requests"] == 1


# -- HTTP framing and the FIFO --------------------------------------------------------------------
def test_response_head_framing():
    head = ResponseHead("py-test")
    ok = head.build(200, b"{}", keep_alive=True, http10=False)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 2\r\n" in ok
    assert ok.endswith(b"\r\n\r\n{}") and b"Connection" not in ok
    assert b"Connection: keep-alive\r\n" in head.build(200, b"{}", keep_alive=True, http10=True)
    assert b"Connection: close\r\n" in head.build(400, b"{}", keep_alive=False, http10=False)
    no_content = head.build(204, b"", keep_alive=True, http10=False)
    assert b"Content-Length" not in no_content and b"Content-Type" not in no_content


class _Transport:
    def __init__(self):
        self.writes = []
        self.closed = False

    def get_extra_info(self, name):
        return None

    def write(self, data):
        self.writes.append(data)

    def can_write_eof(self):
        return False

    def close(self):
        self.closed = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class _ReverseApp:
    """Completes requests only when told, in any order."""

    def __init__(self):
        self.connections = set()
        self.draining = False
        self.pending = []

    def handle(self, conn, request):
        self.pending.append((conn, request))

    def count_rejected(self, path):
        pass

    error_body = staticmethod(lambda message: json.dumps({"error": message}).encode())


def _connection(app=None, protocol_class=HttpProtocol):
    app = app or _ReverseApp()
    protocol = protocol_class(app, ResponseHead("py-test"))
    transport = _Transport()
    protocol.connection_made(transport)
    return app, protocol, transport


def test_pipelined_responses_leave_in_request_order():
    async def scenario():
        app, protocol, transport = _connection()
        protocol.data_received(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
        assert [r.url for _, r in app.pending] == [b"/r0", b"/r1", b"/r2"]
        for index in (2, 1):            # the later requests finish first: nothing may be written
            conn, request = app.pending[index]
            conn.respond(request, 200, b'{"n":%d}' % index)
        assert transport.writes == []
        conn, request = app.pending[0]
        conn.respond(request, 200, b'{"n":0}')
        assert [w.rsplit(b"\r\n\r\n", 1)[1] for w in transport.writes] == \
            [b'{"n":0}', b'{"n":1}', b'{"n":2}']

    asyncio.run(scenario())


def test_malformed_request_answered_after_earlier_ones_then_closed():
    async def scenario():
        app, protocol, transport = _connection()
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
        assert transport.writes == []   # the 400 waits for the first answer
        conn, request = app.pending[0]
        conn.respond(request, 200, b"{}")
        assert transport.writes[0].startswith(b"HTTP/1.1 200")
        assert transport.writes[1].startswith(b"HTTP/1.1 400") and b"Connection: close" in transport.writes[1]
        assert transport.closed

    asyncio.run(scenario())


# -- process layer --------------------------------------------------------------------------------
def test_pool_split_over_workers():
    def settings(pool, workers):
        return Settings(server_name="py-test", backend="none", host="127.0.0.1", port=0,
                        dsn="postgresql://x", workers=workers, pool_size=pool, model_dir=None,
                        timers=True)

    assert [settings(8, 3).pool_share(w) for w in range(3)] == [3, 3, 2]
    assert [settings(8, 1).pool_share(w) for w in range(1)] == [8]
    assert [settings(1, 2).pool_share(w) for w in range(2)] == [1, 1]   # at least one each


def test_bind_refuses_a_port_someone_already_serves():
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match="cannot listen"):
            bind_sockets("127.0.0.1", port, 2)
    sockets = bind_sockets("127.0.0.1", 0, 2)
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
    finally:
        for s in sockets:
            s.close()


# -- protocol-level fixes: HTTP/0.9, unfinished header line, drain, API key ----------------------
def test_request_line_without_version_is_400_and_closes():
    async def scenario():
        app, protocol, transport = _connection()
        protocol.data_received(b"GET /health\r\nHost: x\r\n\r\n")
        assert app.pending == []
        assert transport.writes[0].startswith(b"HTTP/1.1 400 ")
        assert b"Connection: close" in transport.writes[0] and transport.closed
        assert b'"error"' in transport.writes[0]

    asyncio.run(scenario())


@pytest.mark.parametrize("first_read", [True, False])
def test_endless_header_line_is_431_from_the_first_read(first_read):
    async def scenario():
        app, protocol, transport = _connection()
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: "
        if first_read:
            protocol.data_received(head + b"c" * 40000)
        else:
            protocol.data_received(head)
            assert transport.writes == []
            protocol.data_received(b"c" * 40000)
        assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 431 ")
        assert transport.closed

    asyncio.run(scenario())


def test_header_limit_not_hit_by_pipelined_requests_in_one_read():
    async def scenario():
        app, protocol, transport = _connection()
        body = b"x" * 30000
        one = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        protocol.data_received(one + b"GET /b HTTP/1.1\r\nHo")    # the 2nd head is unfinished
        protocol.data_received(b"st: x\r\n\r\n")
        assert [r.url for _, r in app.pending] == [b"/a", b"/b"] and transport.writes == []
        # A head just under the limit spread over two reads is fine too.
        app, protocol, transport = _connection()
        protocol.data_received(b"GET /c HTTP/1.1\r\nX-Pad: " + b"c" * 8000)
        protocol.data_received(b"c" * 8000 + b"\r\n\r\n")
        assert [r.url for _, r in app.pending] == [b"/c"] and transport.writes == []

    asyncio.run(scenario())


def test_responses_during_drain_say_connection_close():
    async def scenario():
        app, protocol, transport = _connection()
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        (conn, first), (_, second) = app.pending
        conn.respond(second, 200, b"{}")            # built before the drain, waits behind /a
        app.draining = True
        protocol.close_if_idle()
        conn.respond(first, 200, b"{}")
        assert len(transport.writes) == 2
        for written in transport.writes:
            head = written.split(b"\r\n\r\n", 1)[0]
            assert head.count(b"Connection:") == 1 and b"Connection: close" in head
            assert written.endswith(b"\r\n\r\n{}")

    asyncio.run(scenario())


class _KeyApp(_ReverseApp):
    """The real App's key check in front of a router that records what got through."""

    def __init__(self, key):
        super().__init__()
        from py_servers.app import App
        self.requests_counted = []
        self.recorder = type("R", (), {"record_request": lambda _, error, stages=None:
                                       self.requests_counted.append(error)})()
        self._api_key = key
        self._route = super().handle
        self.handle = lambda conn, request: App._handle_with_key(self, conn, request)


def test_api_key_guards_every_route_but_health():
    from py_servers.http import ApiKeyProtocol

    async def scenario():
        app, protocol, transport = _connection(_KeyApp(b"k3y"), ApiKeyProtocol)
        protocol.data_received(
            b"POST /rank HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
            b"GET /nope HTTP/1.1\r\nX-API-Key: wrong\r\n\r\n"
            b"GET /health HTTP/1.1\r\n\r\n"
            b"GET /stats HTTP/1.1\r\nx-api-key: k3y\r\n\r\n"
            b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert [r.url for _, r in app.pending] == [b"/health", b"/stats"]
        statuses = [w.split(b" ", 2)[1] for w in transport.writes]
        assert statuses == [b"401", b"401"]     # /health and /stats are pending, in order
        assert transport.writes[0].endswith(b'\r\n\r\n{"error":"missing or invalid API key"}')
        assert b"Content-Type: application/json" in transport.writes[0]
        assert b"Connection: close" not in transport.writes[0] and not transport.closed
        assert app.requests_counted == [True]   # the 401 on /rank counts as an error

    asyncio.run(scenario())


def test_api_key_flag_and_environment(monkeypatch, capsys):
    from py_servers.main import parse_args

    base = ["--server-name", "py-test", "--backend", "none", "--port", "0"]
    monkeypatch.delenv("RANKBENCH_API_KEY", raising=False)
    assert parse_args(base).api_key is None
    monkeypatch.setenv("RANKBENCH_API_KEY", "")
    assert parse_args(base).api_key is None
    monkeypatch.setenv("RANKBENCH_API_KEY", "from-env")
    assert parse_args(base).api_key == "from-env"
    assert parse_args(base + ["--api-key", "flag"]).api_key == "flag"
    assert "flag" not in repr(parse_args(base + ["--api-key", "flag"]))
    with pytest.raises(SystemExit) as exit_info:
        parse_args(base + ["--api-key", ""])
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.strip() == "--api-key must not be empty"


# -- --server-name --------------------------------------------------------------------------------
def _python_spec():
    from rankbench.servers import SERVERS

    return next(spec for spec in SERVERS.values() if spec.language == "python")


def _parse_error(argv, capsys) -> str:
    from py_servers.main import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_server_name_is_required(capsys):
    err = _parse_error(["--backend", "none", "--port", "0"], capsys)
    assert "the following arguments are required: --server-name" in err


def test_registered_name_takes_its_registry_port():
    from py_servers.main import parse_args

    spec = _python_spec()
    settings = parse_args(["--server-name", spec.name, "--backend", spec.backend])
    assert (settings.server_name, settings.port) == (spec.name, spec.default_port)
    assert parse_args(["--server-name", spec.name, "--backend", spec.backend,
                       "--port", "0"]).port == 0


def test_unregistered_name_needs_a_port(capsys):
    from py_servers.main import parse_args

    err = _parse_error(["--server-name", "exp-onnx-spin", "--backend", "none"], capsys)
    assert err.strip().endswith("error: --port is required for a server not in rankbench.servers")
    settings = parse_args(["--server-name", "exp-onnx-spin", "--backend", "none", "--port", "9123"])
    assert (settings.server_name, settings.port) == ("exp-onnx-spin", 9123)


def test_a_registered_name_cannot_be_borrowed(capsys):
    from rankbench.servers import SERVERS

    python = _python_spec()
    other_backend = next(b for b in ("none", "onnx") if b != python.backend)
    err = _parse_error(["--server-name", python.name, "--backend", other_backend], capsys)
    assert f"--server-name {python.name} is registered" in err
    rust = next(spec for spec in SERVERS.values() if spec.language == "rust")
    err = _parse_error(["--server-name", rust.name, "--backend", "none", "--port", "0"], capsys)
    assert f"--server-name {rust.name} is registered" in err and "rust" in err


@pytest.mark.parametrize("name", ["", "py onnx", "py-onnx\r\nX-Evil: 1", "py-\u00f6nnx"])
def test_server_name_must_fit_a_header(name, capsys):
    err = _parse_error(["--server-name", name, "--backend", "none", "--port", "0"], capsys)
    assert "--server-name must be printable ASCII without spaces" in err


class _Responses:
    """A connection stand-in that keeps what the app answers."""

    def __init__(self):
        self.answers = []

    def respond(self, request, status, body, extra=b""):
        self.answers.append((status, json.loads(body) if body else None))


class _Database:
    def __init__(self, problem=None):
        self.problem = problem

    async def check(self):
        return self.problem


def _app(name, *, database=None, workers=1, backend=None):
    from py_servers.app import App
    from py_servers.backends.none_backend import NoneBackend

    shared = SharedStats(workers)
    return App(server_name=name, backend=backend or NoneBackend(),
               database=database or _Database(), shared_stats=shared,
               recorder=shared.recorder(0), worker=0, workers=workers, pool_total=1)


def test_health_and_stats_report_the_server_name():
    async def scenario():
        app = _app("exp-floor-1")
        app.shared_stats.set_ready(0, True)
        conn = _Responses()
        await app._health(conn, None)
        assert app.stats()["server"] == "exp-floor-1"
        app.database.problem = "connection refused"
        await app._health(conn, None)
        return conn.answers

    ok, unavailable = asyncio.run(scenario())
    assert ok == (200, {"status": "ok", "server": "exp-floor-1"})
    assert unavailable == (503, {"status": "unavailable", "server": "exp-floor-1",
                                 "error": "database unavailable: connection refused"})


# -- runtime thread settings ------------------------------------------------------------------------
def test_stats_reports_every_workers_thread_settings(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)     # as if not installed

    async def scenario():
        app = _app("exp-floor-1", workers=2)
        shared = app.shared_stats
        assert app.stats()["runtime_threads"] == {}              # none: no runtime threads
        shared.set_runtime_threads(1, {"num_threads": 1})
        disagreeing = app.stats()["runtime_threads"]
        shared.set_runtime_threads(1, {})
        return disagreeing, app.stats()["runtime_threads"]

    disagreeing, agreeing = asyncio.run(scenario())
    assert disagreeing == {"error": "workers report different thread settings",
                           "per_worker": [{}, {"num_threads": 1}]}
    assert agreeing == {}


def test_thread_settings_before_any_worker_reported():
    assert SharedStats(2).runtime_threads() == {
        "error": "no worker has reported its thread settings yet"}


def test_threadpoolctl_pools_are_added_when_installed(monkeypatch):
    from py_servers.backends import runtime_threads
    from py_servers.backends.none_backend import NoneBackend

    pools = [{"user_api": "blas", "internal_api": "openblas", "prefix": "libscipy_openblas",
              "filepath": "/x/libscipy_openblas.so", "version": "0.3.29", "num_threads": 1}]
    fake = types.SimpleNamespace(threadpool_info=lambda: pools)
    monkeypatch.setitem(sys.modules, "threadpoolctl", fake)
    assert runtime_threads(NoneBackend()) == {"threadpools": [
        {"user_api": "blas", "internal_api": "openblas", "prefix": "libscipy_openblas",
         "num_threads": 1}]}


def test_onnx_session_reports_the_contracts_thread_settings(model_dir):
    from py_servers.backends import load_backend

    backend = load_backend("onnx", model_dir)
    assert backend.runtime_threads() == {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
        "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def test_torch_reports_one_thread_of_each_kind(model_dir):
    # In a fresh process, like a worker: torch's inter-op pool can be sized once per process only.
    code = ("import json, sys; from py_servers.backends import load_backend; "
            "print(json.dumps(load_backend('torch', sys.argv[1]).runtime_threads()))")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "4"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"num_threads": 1, "num_interop_threads": 1}


def test_candle_without_runtime_threads_says_so(monkeypatch):
    extension = types.SimpleNamespace()          # an extension built before runtime_threads()
    monkeypatch.setitem(sys.modules, "rankbench_candle", extension)
    # Imported afresh against the stand-in; both the module entry and the package attribute are
    # put back afterwards, so other suites still get the real extension.
    monkeypatch.delitem(sys.modules, "py_servers.backends.candle_backend", raising=False)
    monkeypatch.setattr(importlib.import_module("py_servers.backends"), "candle_backend", None,
                        raising=False)
    candle_backend = importlib.import_module("py_servers.backends.candle_backend")
    monkeypatch.setattr(candle_backend, "rankbench_candle", extension)
    backend = object.__new__(candle_backend.CandleBackend)
    report = backend.runtime_threads()
    assert set(report) == {"error"} and "runtime_threads() is missing" in report["error"]
    extension.runtime_threads = lambda: {"compute_threads": 1}
    assert backend.runtime_threads() == {"compute_threads": 1}
    extension.runtime_threads = lambda: 1
    assert "expected a dict" in backend.runtime_threads()["error"]


# -- stage histograms in /stats ---------------------------------------------------------------------
def _stage(ns):
    return (ns,) * len(STAGES)


def test_stage_histogram_is_merged_over_workers_in_whole_microseconds():
    stats = SharedStats(2)
    first, second = stats.recorder(0), stats.recorder(1)
    for ns in (10_000, 10_100):
        first.record_request(False, _stage(ns))
    for _ in range(3):
        second.record_request(False, _stage(50_000))
    second.record_request(True)                      # an error: counted, no stages
    stages = stats.snapshot()["stages"]
    assert stages["db"]["histogram"] == [[10, 2], [50, 3]]
    assert stages["total"]["histogram"] == [[10, 2], [50, 3]]
    assert stats.snapshot()["stages"]["db"]["count"] == 5
    stats.reset()
    assert stats.snapshot()["stages"]["db"]["histogram"] == []
    first.record_request(False, (7_000, 7_000, None, 7_000, 7_000, 7_000))
    stages = stats.snapshot()["stages"]
    assert stages["db"]["histogram"] == [[7, 1]] and stages["pre"]["histogram"] == []


def test_stage_histogram_agrees_with_the_recorded_values():
    values = np.random.default_rng(5).lognormal(10, 1.0, 20_000).astype(np.int64) + 1
    stats = SharedStats(1)
    recorder = stats.recorder(0)
    for v in values.tolist():
        recorder.record_request(False, _stage(v))
    db = stats.snapshot()["stages"]["db"]
    pairs = db["histogram"]
    assert [v for v, _ in pairs] == sorted({v for v, _ in pairs})      # distinct, ascending
    assert all(type(v) is int and type(c) is int and c > 0 for v, c in pairs)
    assert sum(c for _, c in pairs) == len(values) == db["count"]
    assert pairs[-1][0] == pytest.approx(values.max() / 1000, rel=0.01)

    def nearest_rank(q):
        wanted, seen = int(np.ceil(q * len(values))), 0
        for value, count in pairs:
            seen += count
            if seen >= wanted:
                return value

    for key, q in (("p50_us", 0.50), ("p90_us", 0.90), ("p99_us", 0.99)):
        exact_us = np.percentile(values, q * 100, method="inverted_cdf") / 1000
        assert abs(nearest_rank(q) - exact_us) <= 0.01 * exact_us + 0.5, key


def test_stage_histogram_rounds_half_microseconds_up():
    # One value: its bucket's midpoint is clamped to the exact max, 2.5 us -> 3 (as candle_server).
    stats = SharedStats(1)
    stats.recorder(0).record_request(False, _stage(2_500))
    assert stats.snapshot()["stages"]["parse"]["histogram"] == [[3, 1]]
