"""The private cluster's lifecycle, on a throwaway cluster of its own (own directory and port),
so that it never disturbs the cluster other tests and running servers use."""
from __future__ import annotations

import os
import shutil
import subprocess

import psutil
import pytest

from rankbench import pg
from rankbench.config import BENCH_DIR, PG_DATABASE, PG_USER
from bench.serverproc import free_port


def postgres_processes(data_dir) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if (proc.info["name"] or "").startswith("postgres") and \
                str(data_dir) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def query(port: int, sql: str) -> str:
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                          "-d", PG_DATABASE, "-c", sql], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def cluster():
    root = BENCH_DIR / f"test-cluster-{os.getpid()}"
    c = pg.Cluster(data_dir=root / "pg", port=free_port(), socket_dir=root / "sock",
                   log_file=root / "pg.log")
    yield c
    pg.down(c, quiet=True)
    shutil.rmtree(root, ignore_errors=True)


def test_up_twice_down_up_again(cluster):
    assert pg.up(cluster, quiet=True) == cluster.url
    first_pid = pg.running_pid(cluster)
    assert first_pid and query(cluster.port, "SELECT current_user") == PG_USER
    # A second up finds it running: same postmaster.
    pg.up(cluster, quiet=True)
    assert pg.running_pid(cluster) == first_pid
    # Loopback only, and the benchmark settings are in force.
    assert query(cluster.port, "SHOW listen_addresses") == "127.0.0.1"
    assert query(cluster.port, "SHOW fsync") == "off"
    if os.geteuid() == 0:
        assert psutil.Process(first_pid).username() == pg.SERVICE_USER
    pg.down(cluster, quiet=True)
    assert pg.running_pid(cluster) is None
    assert postgres_processes(cluster.data_dir) == []
    pg.up(cluster, quiet=True)
    assert query(cluster.port, "SELECT 1") == "1"


def test_stale_pid_file_does_not_block_restart(cluster):
    pg.up(cluster, quiet=True)
    pg.down(cluster, quiet=True)
    # A crash leaves postmaster.pid behind; its pid may since belong to an unrelated process.
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        lines = [str(unrelated.pid), str(cluster.data_dir), "0", str(cluster.port), "", "", "", ""]
        cluster.pid_file.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            shutil.chown(cluster.pid_file, pg.SERVICE_USER)
        assert pg.running_pid(cluster) is None
        pg.up(cluster, quiet=True)
        assert query(cluster.port, "SELECT 1") == "1"
    finally:
        unrelated.kill()
        unrelated.wait()


def test_down_when_not_running_is_quiet_and_harmless(cluster):
    pg.down(cluster, quiet=True)
    assert pg.running_pid(cluster) is None
