"""Resource sampling (CPU seconds per process group, postgres backends attributed by client port)
and the pgbench ceiling script."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import asyncpg
import numpy as np
import pytest

from bench import pgbench
from bench.db import db_port
from bench.procs import Supervisor
from bench.sampler import PostgresGroups, ResourceSampler, process_tree

BURNER = """
import sys, time
sys.stdin.readline()
start = time.process_time()
print(start, flush=True)
x = 0
while time.process_time() - start < 0.4:
    x += 1
print(time.process_time(), flush=True)
time.sleep(60)
"""


def test_sampler_counts_the_cpu_a_process_spent_inside_the_window():
    child = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        sampler = ResourceSampler(lambda: {"child": process_tree(child.pid)}, interval_s=0.05)
        sampler.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        begin = float(child.stdout.readline())
        end = float(child.stdout.readline())
        result = sampler.stop()
    finally:
        child.kill()
        child.wait()
    spent = end - begin
    # /proc reports CPU time in clock ticks (10 ms); the window also holds the two prints.
    assert result.groups["child"].cpu_s == pytest.approx(spent, abs=0.05)
    assert result.groups["child"].rss_peak_mb > 1
    assert result.samples >= 3


def test_wait4_gives_the_exact_cpu_of_a_load_generator(tmp_path):
    supervisor = Supervisor()
    proc = supervisor.start([sys.executable, "-c", "import time\nt=time.process_time()\n"
                             "while time.process_time()-t<0.3: pass\nprint(time.process_time())"],
                            "burner", tmp_path / "out", tmp_path / "err")
    usage = supervisor.wait_measured(proc, timeout_s=60)
    assert proc.returncode == 0
    reported = float((tmp_path / "out").read_text())
    assert usage.cpu_s == pytest.approx(reported, abs=0.03)
    assert supervisor.running() == []


def test_postgres_backends_are_attributed_by_client_port(dsn):
    from rankbench import pg
    postmaster = pg.running_pid(pg.Cluster())
    if postmaster is None:
        pytest.skip("the private cluster is not the database in use")

    async def scenario():
        conn = await asyncpg.connect(dsn)
        try:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            ours = PostgresGroups(postmaster, db_port(dsn), lambda: [os.getpid()])()
            theirs = PostgresGroups(postmaster, db_port(dsn), lambda: [])()
            return backend, ours, theirs
        finally:
            await conn.close()

    backend, ours, theirs = asyncio.run(scenario())
    assert backend in {p.pid for p in ours["db"]}
    assert backend not in {p.pid for p in ours["db_foreign"]}
    assert backend in {p.pid for p in theirs["db_foreign"]}
    assert postmaster in {p.pid for p in theirs["db"]}  # the postmaster is always the cluster's


def _server_sql() -> dict[str, set[str]]:
    """The SELECT statements written in each server's source (not the harness's own constants)."""
    from rankbench.config import ROOT

    found = {}
    for stack, paths in (("python", ("py_servers/db.py", "py_servers/batching.py")),
                         ("rust", ("candle_server/src/server/db.rs",))):
        text = "\n".join((ROOT / p).read_text() for p in paths if (ROOT / p).exists())
        found[stack] = {pgbench.normalise_sql(q) for q in re.findall(r'"(SELECT [^"]*)"', text)
                        if q != "SELECT 1"}
    return found


def test_ceiling_script_sends_exactly_the_servers_statements():
    script = pgbench.script_text(64)
    servers = _server_sql()
    assert servers["python"] == servers["rust"]
    # The per-request statements (the batching variants also widen the user's to `= ANY($1)`).
    per_request = {q for q in servers["rust"] if "users WHERE id = ANY" not in q}
    assert len(per_request) == 2
    assert pgbench.statements_as_prepared(script) == per_request
    # Every array is reachable exactly once from the \if tree.
    used = re.findall(r"ANY\(:items_(\d+)\)", script)
    assert sorted(map(int, used)) == list(range(64))
    depth, deepest = 0, 0
    for line in script.splitlines():
        depth += line.startswith("\\if") - line.startswith("\\endif")
        deepest = max(deepest, depth)
    assert depth == 0 and deepest == 6  # log2(64) comparisons per transaction


def test_ceiling_item_arrays_are_distinct_ids_in_range():
    arrays = pgbench.item_arrays(1000, 4, 1, 100_000, seed=5)
    assert arrays == pgbench.item_arrays(1000, 4, 1, 100_000, seed=5)
    for text in arrays:
        ids = np.array([int(x) for x in text.strip("{}").split(",")])
        assert ids.size == 1000 == np.unique(ids).size
        assert ids.min() >= 1 and ids.max() <= 100_000


def test_pgbench_log_window_and_failures(tmp_path):
    (tmp_path / "tx.123").write_text("0 0 1500 0 1700000000 100000\n"
                                     "1 0 2500 0 1700000001 0\n"
                                     "0 1 700 0 1700000001 500000\n")
    rows = pgbench.read_logs(tmp_path / "tx")
    assert pgbench.window(rows, 1700000000.5, 1700000002) == [[700, 1], [2500, 1]]
    (tmp_path / "tx.123").write_text("0 0 failed 0 1700000000 100000\n")
    with pytest.raises(pgbench.PgbenchError, match="failed transaction"):
        pgbench.read_logs(tmp_path / "tx")


def test_pgbench_stdout_figures():
    text = ("number of transactions actually processed: 50809\n"
            "number of failed transactions: 0 (0.000%)\n"
            "tps = 16974.554372 (without initial connection time)\n")
    assert pgbench.parse_stdout(text) == {"failed": 0, "processed": 50809, "tps_total": 16974.554372}
