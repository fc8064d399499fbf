"""A throwaway PostgreSQL cluster for the fault suite, under .bench/faults-<pid>/.

The suite stops and starts its database on purpose, so it never uses the shared cluster in
.bench/pg (other suites and benchmarks run against that one at the same time). The cluster is made
by rankbench.pg on a free port, seeded at SCALE=1 by seed.data, and removed at the end. Clusters
left behind by a suite that was killed (their owner pid is gone) are stopped and removed first.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from rankbench import pg
from rankbench.config import BENCH_DIR
from bench.serverproc import free_port

PREFIX = "faults-"


def _cluster_in(root: Path, port: int) -> pg.Cluster:
    return pg.Cluster(data_dir=root / "pg", port=port, socket_dir=root / "sock",
                      log_file=root / "pg.log")


def remove_stale() -> list[Path]:
    """Stop and delete fault clusters whose owning process no longer exists."""
    removed = []
    for root in BENCH_DIR.glob(f"{PREFIX}*"):
        try:
            owner = int(root.name[len(PREFIX):])
        except ValueError:
            continue
        if owner == os.getpid() or _pid_alive(owner):
            continue
        try:
            pg.down(_cluster_in(root, 0), quiet=True)
        except pg.ClusterError:
            pass
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class FaultCluster:
    """`with FaultCluster() as db:` -> a seeded cluster; db.url, db.stop(), db.start()."""

    def __init__(self) -> None:
        self.root = BENCH_DIR / f"{PREFIX}{os.getpid()}"
        self.cluster = _cluster_in(self.root, free_port())

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def log_file(self) -> Path:
        return self.cluster.log_file

    def __enter__(self) -> "FaultCluster":
        from seed.data import seed

        remove_stale()
        if self.root.exists():
            pg.down(self.cluster, quiet=True)
            shutil.rmtree(self.root)
        pg.up(self.cluster, quiet=True)
        asyncio.run(seed(self.url, 1, force=True))
        return self

    def __exit__(self, *exc) -> None:
        try:
            pg.down(self.cluster, quiet=True)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> float:
        """Fast shutdown (sessions are terminated); returns the wall-clock time it completed."""
        pg.down(self.cluster, quiet=True)
        return time.time()

    def start(self) -> float:
        """Start and wait until it accepts connections; returns the wall-clock time of that."""
        pg.up(self.cluster, quiet=True)
        return time.time()

    def ensure_up(self) -> None:
        if pg.running_pid(self.cluster) is None:
            pg.up(self.cluster, quiet=True)


class TableLock:
    """`with TableLock(url, "items"):` holds ACCESS EXCLUSIVE on a table in an open transaction,
    which blocks every reader of it (a row lock, SELECT ... FOR UPDATE, would not block plain
    SELECTs). A psql child holds the transaction; leaving the block rolls it back."""

    def __init__(self, url: str, table: str, timeout_s: float = 30.0) -> None:
        if table not in ("users", "items"):
            raise ValueError(f"unexpected table {table!r}")
        self.url, self.table, self.timeout_s = url, table, timeout_s
        self.proc = None

    def __enter__(self) -> "TableLock":
        import selectors
        import subprocess

        psql = pg.pg_bindir() / "psql"
        self.proc = subprocess.Popen([str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                      self.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.proc.stdin.write(f"BEGIN;\nLOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE;\n"
                              "SELECT 'rankbench-locked';\n".encode())
        self.proc.stdin.flush()
        # Raw reads on the pipe: a buffered readline() would hide lines from select().
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout_s
        seen = b""
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                if b"rankbench-locked" in seen:
                    return self
        finally:
            selector.close()
        self._end()
        raise RuntimeError(f"could not lock {self.table}: {seen.decode(errors='replace')[-300:]}")

    def _end(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.write(b"ROLLBACK;\n\\q\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __exit__(self, *exc) -> None:
        self._end()


def lock_waiters(url: str) -> int:
    """Backends of the cluster waiting on a heavyweight lock right now."""
    import subprocess

    out = subprocess.run([str(pg.pg_bindir() / "psql"), "-X", "-A", "-t", url, "-c",
                          "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"],
                         capture_output=True, text=True, timeout=10)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0
