"""Every process the harness starts goes through here, so that Ctrl-C or any failure stops all of them.

Each child runs in its own session (process group), so that a terminal's Ctrl-C reaches only the
harness, which then stops the children in order: SIGTERM to the whole group, a grace period, SIGKILL
to the group and to any descendant that left it. wrk and pgbench are reaped with wait4(), which gives
their exact CPU time and peak RSS instead of a sampled estimate.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Usage:
    """Exact resource use of a reaped child (from wait4)."""
    cpu_s: float
    user_s: float
    system_s: float
    maxrss_mb: float


class Supervisor:
    def __init__(self) -> None:
        self._children: dict[int, tuple[subprocess.Popen, str, list[psutil.Process]]] = {}
        self._stop_log: list[str] = []  # names of processes that were still running when stopped
        self._mark = 0

    def mark(self) -> None:
        """Remember this moment (an interrupt), for `stopped_since_mark`."""
        self._mark = len(self._stop_log)

    def stopped_since_mark(self) -> list[str]:
        return self._stop_log[self._mark:]

    # -- starting ---------------------------------------------------------------------------------
    def start(self, argv: list[str], name: str, stdout: Path | None, stderr: Path | None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL
        err = open(stderr, "ab") if stderr else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                    cwd=cwd, start_new_session=True)
        finally:
            for handle in (out, err):
                if handle is not subprocess.DEVNULL:
                    handle.close()
        self._children[proc.pid] = (proc, name, [])
        return proc

    def remember_tree(self, proc: subprocess.Popen) -> None:
        """Note the current descendants, so that children that leave the group are still found."""
        entry = self._children.get(proc.pid)
        if entry is None:
            return
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if all(child.pid != known.pid for known in entry[2]):
                    entry[2].append(child)
        except psutil.Error:
            pass

    # -- waiting ----------------------------------------------------------------------------------
    def wait_measured(self, proc: subprocess.Popen, timeout_s: float | None = None) -> Usage:
        """Wait for a child and return its exact rusage; kill it if it outlives timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                self._children.pop(proc.pid, None)
                return Usage(cpu_s=ru.ru_utime + ru.ru_stime, user_s=ru.ru_utime,
                             system_s=ru.ru_stime, maxrss_mb=ru.ru_maxrss / 1024.0)
            if deadline is not None and time.monotonic() > deadline:
                self.stop(proc, grace_s=2.0)
                raise TimeoutError(f"pid {proc.pid} did not finish within {timeout_s:.0f} s")
            time.sleep(0.02)

    # -- stopping ---------------------------------------------------------------------------------
    def stop(self, proc: subprocess.Popen, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to grace_s, then SIGKILL group and known descendants.
        Returns the exit code (negative signal number when killed)."""
        entry = self._children.get(proc.pid)
        self.remember_tree(proc)
        descendants = entry[2] if entry else []
        if proc.poll() is None:
            self._stop_log.append(entry[1] if entry else str(proc.pid))
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            proc.wait()
        # Workers that put themselves in another group, or outlived their parent.
        for child in descendants:
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
            except psutil.Error:
                pass
        psutil.wait_procs([c for c in descendants if _alive(c)], timeout=2.0)
        self._children.pop(proc.pid, None)
        return proc.returncode

    def stop_all(self, grace_s: float = 3.0) -> list[str]:
        """Stop every child still known, newest first. Returns the names of those stopped."""
        stopped = []
        for pid in list(self._children)[::-1]:
            proc, name, _ = self._children[pid]
            if proc.poll() is None:
                stopped.append(name)
            self.stop(proc, grace_s=grace_s)
        return stopped

    def running(self) -> list[str]:
        return [name for proc, name, _ in self._children.values() if proc.poll() is None]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child is its session's and group's leader: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(path: Path | None, lines: int = 20) -> list[str]:
    """The last lines of a log file, for error messages."""
    if path is None or not path.exists():
        return []
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    return list(deque((line for line in text.splitlines() if line.strip()), maxlen=lines))
