"""CPU pinning (PIN=1): the server on the first half of the cores, postgres and the load generator
on the rest, so that they do not take turns on the same core. With 2 cores: server on cpu 0,
postgres + wrk/pgbench on cpu 1. Without pinning the same split still decides the default --workers
(the cores nominally given to the server), but the kernel schedules freely.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class Pinning:
    enabled: bool
    server_cpus: tuple[int, ...]
    other_cpus: tuple[int, ...]

    @property
    def server_cores(self) -> int:
        return len(self.server_cpus)

    def as_json(self) -> dict:
        return {"enabled": self.enabled, "server_cpus": list(self.server_cpus),
                "postgres_and_load_cpus": list(self.other_cpus)}

    def prefix(self, role: str) -> list[str]:
        """Command prefix that starts a process on its cpus ('server' or 'other')."""
        if not self.enabled:
            return []
        cpus = self.server_cpus if role == "server" else self.other_cpus
        return [shutil.which("taskset") or "taskset", "-c", ",".join(map(str, cpus))]


def plan(enabled: bool, cpus: list[int] | None = None) -> Pinning:
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(enabled and False, tuple(cpus), tuple(cpus))
    half = max(1, len(cpus) // 2)
    return Pinning(enabled, tuple(cpus[:half]), tuple(cpus[half:]))


@dataclass
class PostgresAffinity:
    """Pins the running cluster (postmaster and children; new backends inherit from the postmaster)
    and puts the original affinities back afterwards: the cluster is shared, so it is left as found."""
    postmaster_pid: int
    cpus: tuple[int, ...]
    saved: dict[tuple[int, float], list[int]] = field(default_factory=dict)

    def apply(self) -> None:
        try:
            root = psutil.Process(self.postmaster_pid)
            procs = [root] + root.children()
        except psutil.Error:
            return
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
                self.saved.setdefault(key, proc.cpu_affinity())
                proc.cpu_affinity(list(self.cpus))
            except psutil.Error:
                continue

    def restore(self) -> None:
        for (pid, created), cpus in self.saved.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    proc.cpu_affinity(cpus)
            except psutil.Error:
                continue
        # Backends forked while pinned inherited the pinned set: give them the postmaster's back.
        try:
            root = psutil.Process(self.postmaster_pid)
            original = root.cpu_affinity()
            for child in root.children():
                try:
                    child.cpu_affinity(original)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        self.saved.clear()
