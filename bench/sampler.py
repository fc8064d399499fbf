"""CPU seconds and RSS of process groups during a measured window, sampled with psutil (~10 Hz).

A group is a function returning its current processes (a server's process tree, the private
cluster's postgres processes). CPU seconds of a group are summed per process as (last value seen -
value at the start of the window); a process born inside the window counts from zero, so short-lived
workers are not lost. The last increment of a process that exits between two samples is lost, which
is why the load generators are measured exactly with wait4 instead (see procs.py). Peak RSS is the
largest per-sample sum over the group's processes (shared pages of forked workers count once per
process, as `ps` shows them).
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

GroupFn = Callable[[], dict[str, list[psutil.Process]]]


@dataclass
class _Track:
    baseline: tuple[float, float]   # (user, system) CPU seconds at the start of the window
    last: tuple[float, float]


@dataclass
class GroupResult:
    cpu_s: float = 0.0
    rss_peak_mb: float = 0.0
    processes_seen: int = 0
    user_s: float = 0.0
    system_s: float = 0.0

    def as_record(self, requests: int) -> dict:
        return {"cpu_s": round(self.cpu_s, 4),
                "cpu_us_per_req": round(self.cpu_s / requests * 1e6, 2) if requests else None,
                "user_s": round(self.user_s, 4), "system_s": round(self.system_s, 4),
                "rss_peak_mb": round(self.rss_peak_mb, 1), "processes": self.processes_seen}


@dataclass
class SamplerResult:
    wall_s: float
    samples: int
    groups: dict[str, GroupResult] = field(default_factory=dict)
    machine_busy_cpu_s: float = 0.0  # all cores, every process on the machine
    machine_steal_cpu_s: float = 0.0  # taken by the hypervisor for other guests
    machine_irq_cpu_s: float = 0.0  # interrupts and softirqs (networking), charged to no process


class ResourceSampler:
    """Start with start(), end with stop(); groups_fn returns {group name: [processes]}."""

    def __init__(self, groups_fn: GroupFn, interval_s: float = 0.1) -> None:
        self._groups_fn = groups_fn
        self._interval = interval_s
        self._tracks: dict[str, dict[tuple[int, float], _Track]] = {}
        self._peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._samples = 0
        self._t0 = 0.0
        self._t0_wall = 0.0
        self._cpu0 = None

    def start(self) -> None:
        self._t0_wall = time.time()
        self._cpu0 = psutil.cpu_times()
        self._t0 = time.monotonic()
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self, initial: bool = False) -> None:
        groups = self._groups_fn()
        with self._lock:
            self._samples += 1
            for name, procs in groups.items():
                tracks = self._tracks.setdefault(name, {})
                rss_total = 0
                for proc in procs:
                    try:
                        with proc.oneshot():
                            times = proc.cpu_times()
                            rss = proc.memory_info().rss
                            created = proc.create_time()
                    except psutil.Error:
                        continue
                    cpu = (times.user, times.system)
                    key = (proc.pid, created)
                    track = tracks.get(key)
                    if track is None:
                        # Present at the start: count from here. Born later: count its whole life.
                        born_inside = not initial and created >= self._t0_wall
                        tracks[key] = _Track(baseline=(0.0, 0.0) if born_inside else cpu, last=cpu)
                    else:
                        track.last = cpu
                    rss_total += rss
                self._peaks[name] = max(self._peaks.get(name, 0.0), rss_total / 2**20)

    def stop(self) -> SamplerResult:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        wall = time.monotonic() - self._t0
        cpu1 = psutil.cpu_times()
        busy = _busy(cpu1) - _busy(self._cpu0)
        steal = getattr(cpu1, "steal", 0.0) - getattr(self._cpu0, "steal", 0.0)
        result = SamplerResult(wall_s=wall, samples=self._samples, machine_busy_cpu_s=busy,
                               machine_steal_cpu_s=steal,
                               machine_irq_cpu_s=_irq(cpu1) - _irq(self._cpu0))
        for name, tracks in self._tracks.items():
            user = sum(max(0.0, t.last[0] - t.baseline[0]) for t in tracks.values())
            system = sum(max(0.0, t.last[1] - t.baseline[1]) for t in tracks.values())
            result.groups[name] = GroupResult(
                cpu_s=user + system, user_s=user, system_s=system,
                rss_peak_mb=self._peaks.get(name, 0.0), processes_seen=len(tracks))
        return result


def _busy(times) -> float:
    """CPU seconds that processes spent on this machine (user, nice, system; guest time is inside
    user/nice). Interrupt and softirq time, much of it loopback networking done on behalf of the
    run, is not charged to any process and is reported apart, as is steal (other guests)."""
    return sum(getattr(times, f, 0.0) for f in ("user", "nice", "system"))


def _irq(times) -> float:
    return getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


# -- process groups ---------------------------------------------------------------------------------

_PROCESS_CACHE: dict[int, psutil.Process] = {}


def _process(pid: int) -> psutil.Process:
    """psutil.Process objects are reused between samples: creating one reads /proc again."""
    proc = _PROCESS_CACHE.get(pid)
    if proc is None:
        if len(_PROCESS_CACHE) > 4096:
            _PROCESS_CACHE.clear()
        proc = _PROCESS_CACHE[pid] = psutil.Process(pid)
    return proc


def child_pids(pid: int) -> list[int]:
    """Direct children from /proc/PID/task/*/children (cheap); psutil's full /proc scan otherwise.
    psutil.Process.children() reads every process's stat file, which at 10 Hz is itself a load."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    try:
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found += [int(x) for x in handle.read().split()]
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return []
        try:  # kernel without CONFIG_PROC_CHILDREN
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    except OSError:
        return []
    return found


def process_tree(pid: int) -> list[psutil.Process]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue += child_pids(current)
    out = []
    for p in pids:
        try:
            out.append(_process(p))
        except psutil.Error:
            continue
    return out


BACKEND_PORT = re.compile(r"\((\d+)\)")


class PostgresGroups:
    """The private cluster's processes, split into `db` and `db_foreign`.

    `db` is the postmaster, its auxiliary processes (checkpointer, walwriter, autovacuum, ...) and the
    client backends serving the connections of the process under test. `db_foreign` are client
    backends of anybody else (another tool or test using the same cluster during the run); they are
    reported apart so that they neither inflate nor hide the database cost of the run. A backend's
    client port is in its process title (`postgres: bench bench 127.0.0.1(40312) idle`) and is matched
    against the local ports of the TCP connections that the process under test holds to the database.
    """

    def __init__(self, postmaster_pid: int, db_port: int, client_pids: Callable[[], list[int]]) -> None:
        self.postmaster_pid = postmaster_pid
        self.db_port = db_port
        self.client_pids = client_pids
        self._ours: set[int] = set()
        self._verdict: dict[tuple[int, float], bool] = {}  # (pid, create_time) -> is ours

    def _refresh_ports(self) -> None:
        ports = set()
        for pid in self.client_pids():
            for proc in process_tree(pid):
                try:
                    conns = proc.net_connections(kind="tcp")
                except psutil.Error:
                    continue
                for conn in conns:
                    if conn.raddr and conn.raddr.port == self.db_port:
                        ports.add(conn.laddr.port)
        self._ours = ports

    def __call__(self) -> dict[str, list[psutil.Process]]:
        try:
            postmaster = _process(self.postmaster_pid)
        except psutil.Error:
            return {"db": [], "db_foreign": []}
        children = []
        for pid in child_pids(self.postmaster_pid):
            try:
                children.append(_process(pid))
            except psutil.Error:  # ended between the listing and now
                continue
        ours, foreign = [postmaster], []
        refreshed = False
        for proc in children:
            try:
                key = (proc.pid, proc.create_time())
                if key not in self._verdict:
                    title = " ".join(proc.cmdline())
                    match = BACKEND_PORT.search(title)
                    if match is None:  # auxiliary process, or a unix-socket client ([local])
                        self._verdict[key] = "[local]" not in title
                    else:
                        port = int(match.group(1))
                        if port not in self._ours and not refreshed:
                            self._refresh_ports()
                            refreshed = True
                        self._verdict[key] = port in self._ours
                (ours if self._verdict[key] else foreign).append(proc)
            except psutil.Error:
                continue
        return {"db": ours, "db_foreign": foreign}
