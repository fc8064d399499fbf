"""Fixtures of the fault suite.

Every test that takes `server_name` runs once per selected server (servers.selection()); the
parametrization is session-scoped, so pytest runs all tests of one server before the next and keeps
one shared server process alive for them (`server`). Tests that kill, reconfigure or starve a server
start their own. All servers talk to one throwaway cluster (`fault_db`), never the shared one.
"""
from __future__ import annotations

import time

import pytest

from . import record, servers
from .cluster import FaultCluster
from .profile import current
from .rawhttp import exchange
from .corpus import VALID_REQUEST, check_valid_answer

SERVER_NAMES, EXPLICIT = servers.selection()


def pytest_generate_tests(metafunc) -> None:
    if "server_name" in metafunc.fixturenames:
        metafunc.parametrize("server_name", SERVER_NAMES, ids=SERVER_NAMES, scope="session")


LAST_FOR_EACH_SERVER = ("test_idle_connections_closed",)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items) -> None:
    """Move the idle-connection check to the end of its server's tests (after pytest has grouped
    the items by server), so that waiting for the server's idle timeout overlaps everything else."""
    def server_of(item):
        return getattr(getattr(item, "callspec", None), "params", {}).get("server_name")

    moved = [item for item in items if item.originalname in LAST_FOR_EACH_SERVER]
    for item in moved:
        items.remove(item)
    for item in moved:
        same = [i for i, other in enumerate(items) if server_of(other) == server_of(item)]
        items.insert(same[-1] + 1 if same else len(items), item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not record.enabled():
        return
    params = getattr(getattr(item, "callspec", None), "params", {})
    record.record("phase", server=params.get("server_name"), when=report.when,
                  duration_s=round(report.duration, 3))
    if report.when == "call" or (report.when == "setup" and not report.passed):
        case = params.get("case")
        record.record("test", nodeid=item.nodeid, test=item.originalname,
                      module=item.module.__name__.rsplit(".", 1)[-1],
                      server=params.get("server_name"),
                      case=getattr(case, "name", None),
                      outcome=report.outcome, when=report.when,
                      duration_s=round(report.duration, 3),
                      message=(report.longrepr.reprcrash.message
                               if report.failed and hasattr(report.longrepr, "reprcrash")
                               and report.longrepr.reprcrash else
                               (str(report.longrepr)[-400:] if not report.passed else "")))


@pytest.fixture(scope="session")
def fault_profile():
    return current()


@pytest.fixture(scope="session")
def fault_db(model_dir):
    # model_dir (tests/conftest.py) makes sure the artifacts exist before any server starts.
    with FaultCluster() as db:
        yield db


@pytest.fixture(scope="session")
def checked_server_name(server_name: str) -> str:
    """The server name, after making sure it can run here (fail if named explicitly)."""
    servers.launcher.resolve(server_name, EXPLICIT)
    return server_name


@pytest.fixture(scope="session")
def server(checked_server_name: str, fault_db):
    started = time.monotonic()
    running = servers.start(checked_server_name, fault_db.url)
    record.record("server_start", server=checked_server_name,
                  seconds=round(time.monotonic() - started, 2))
    yield running
    running.stop()


@pytest.fixture
def db(fault_db):
    """The throwaway cluster, running (a test that stopped it and failed may have left it down)."""
    fault_db.ensure_up()
    return fault_db


def assert_serves(server, context: str = "") -> None:
    """The server is alive and answers a valid request on a new connection with 200."""
    if server.process.poll() is not None:
        pytest.fail(f"{server.name} exited with {server.process.returncode} {context}\n"
                    f"{server.stderr_tail()}")
    response = exchange(server.host, server.port, VALID_REQUEST)
    assert response.outcome == "response" and response.status == 200, \
        f"{server.name}: a valid request on a new connection {context} got {response.label}: " \
        f"{response.raw[:300]!r}"
    problem = check_valid_answer(response.body)
    assert problem is None, f"{server.name}: valid request {context}: {problem}"


CRASH_MARKERS = ("Traceback (most recent call last)", "panicked at", "internal error",
                 "Internal Server Error", "Fatal Python error", "Segmentation fault")


def log_size(server) -> int:
    try:
        return server.stderr_path.stat().st_size
    except OSError:
        return 0


def new_log_trouble(server, offset: int) -> list[str]:
    """Lines the server wrote to stderr since `offset` that show an unhandled error."""
    try:
        with open(server.stderr_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(m in line for m in CRASH_MARKERS)]
