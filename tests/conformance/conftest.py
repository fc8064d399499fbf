"""Fixtures of the HTTP conformance suite (helpers in conformance_servers.py).

Selection: RANKBENCH_SERVERS (comma list of rankbench.servers names; default every Python server
whose prerequisites exist; a server named explicitly whose prerequisites are missing FAILS) x
RANKBENCH_WORKERS (default "1,2"). Each pair is started once per session on a free port and stopped
with SIGTERM (then SIGKILL) after its tests.
"""
from __future__ import annotations

import pytest
from conformance_servers import CASES, Oracle, RunningServer, ServerCase, resolve_case, start_server


@pytest.fixture(scope="session", params=CASES, ids=[f"{n}-w{w}" for n, w in CASES])
def server_case(request) -> ServerCase:
    case = ServerCase(*request.param)
    resolve_case(case)
    return case


@pytest.fixture(scope="session")
def server(server_case: ServerCase, dsn, model_dir) -> RunningServer:
    running = start_server(server_case.spec, server_case.workers, dsn, model_dir)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def oracle(dsn, model_dir) -> Oracle:
    return Oracle(dsn, model_dir)
