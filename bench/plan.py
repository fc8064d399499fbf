"""The order of runs and the time they should take.

Repeats are interleaved: for every (items, concurrency) and repeat, each server runs once, then the
next repeat starts (A B C, B C A, ... not A A B B C C), so that slow drift of the machine (thermal
state, other tenants, caches) spreads over all servers instead of landing on one. The order rotates
by one place every repeat (a Latin square when repeats = participants), so a position effect (the
first run after a pause, the run after the heaviest server) does not always land on the same server;
each run records its position and its repeat's order. The database ceilings are participants too.
"""
from __future__ import annotations

from dataclasses import dataclass

CEILING = "db-ceiling"                   # rankbench-ceiling: the servers' own database work
PGBENCH_CEILING = "db-ceiling-pgbench"   # pgbench's text-result transaction: a second reference
CEILINGS = (CEILING, PGBENCH_CEILING)

# Seconds a server run costs beyond warm-up + duration: start until /health (Python servers import
# torch/onnxruntime), /stats, SIGTERM and exit. Measured on the 2-core reference machine; the ETA
# replaces it by the observed average as soon as runs complete.
SERVER_OVERHEAD_S = {"python": 4.0, "rust": 1.0}
DEFAULT_OVERHEAD_S = 4.0
CEILING_OVERHEAD_S = 1.0
VERIFY_S_PER_SERVER = 6.0


@dataclass(frozen=True)
class Run:
    index: int  # 0-based position in the plan
    server: str  # registry name, or CEILING
    scenario: str
    items: int
    concurrency: int
    repeat: int
    position: int = 0            # place in this repeat's order
    order: tuple[str, ...] = ()  # this repeat's participants in run order

    @property
    def is_ceiling(self) -> bool:
        return self.server in CEILINGS

    @property
    def key(self) -> tuple:
        """How records are found again: never by position."""
        return (self.server, self.scenario, self.items, self.concurrency, self.repeat)


def rotated(participants: list[str], repeat: int) -> list[str]:
    """Repeat r runs the participants rotated left by r places."""
    if not participants:
        return []
    shift = repeat % len(participants)
    return participants[shift:] + participants[:shift]


def build_plan(servers: list[str], scenario: str, items: tuple[int, ...],
               concurrency: tuple[int, ...], repeats: int, ceiling: bool,
               pgbench_ceiling: bool = False) -> list[Run]:
    participants = list(servers) + ([CEILING] if ceiling else []) + \
        ([PGBENCH_CEILING] if pgbench_ceiling else [])
    runs: list[Run] = []
    for n_items in items:
        for conc in concurrency:
            for repeat in range(repeats):
                order = tuple(rotated(participants, repeat))
                for position, server in enumerate(order):
                    runs.append(Run(len(runs), server, scenario, n_items, conc, repeat,
                                    position, order))
    return runs


def estimate_run_s(run: Run, warmup_s: float, duration_s: float, languages: dict[str, str]) -> float:
    if run.is_ceiling:
        return warmup_s + duration_s + CEILING_OVERHEAD_S
    overhead = SERVER_OVERHEAD_S.get(languages.get(run.server, ""), DEFAULT_OVERHEAD_S)
    return overhead + warmup_s + duration_s


def estimate_total_s(runs: list[Run], warmup_s: float, duration_s: float,
                     languages: dict[str, str], verify_servers: int) -> float:
    return verify_servers * VERIFY_S_PER_SERVER + sum(
        estimate_run_s(r, warmup_s, duration_s, languages) for r in runs)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
