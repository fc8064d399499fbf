"""The rules of the latency-objective study (issue 16), shared by the harness (bench/slo.py: which
rates to run) and the report (analysis/slo_report.py: what the runs say). Pure functions.

A rate passes an objective when the run at that offered rate
  - completed every scheduled request with a 2xx answer (no error, no request left unanswered),
  - achieved within 1% of the offered rate (2xx answers per second of the sending window), and
  - kept its p99 latency (from each request's scheduled start) at or under the objective.
A server's capacity under the objective is the highest offered rate that passes with every lower
measured rate passing too: a pass above a failure (noise on a shared machine) does not raise it,
and is reported as such (`Capacity.non_monotone`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

LADDER_SHARES = (0.10, 0.25, 0.50, 0.70, 0.80, 0.90, 1.00, 1.10)  # of the closed-loop maximum
OBJECTIVE_MS = 25.0            # SLO_P99_MS: the study's Candle p99
REPORTED_OBJECTIVES_MS = (10.0, 25.0, 50.0)
ACHIEVED_TOLERANCE = 0.01      # achieved within 1% of offered
REFINE_RUNS = 3                # extra runs between the measured rates, per server
REFINE_RESOLUTION = 0.02       # stop refining when the bracket is narrower than 2% of its top
GENERATOR_LIMIT_SHARE = 0.80   # warn when a rate is above 80% of the generator's measured limit

# Duration of a run at `rate`: enough requests that about 100 lie above the p99 (10,000), never
# under 10 s (seconds-scale disturbances average out) nor over 60 s.
MIN_REQUESTS = 10_000
MIN_DURATION_S = 10
MAX_DURATION_S = 60


@dataclass(frozen=True)
class Point:
    """One open-loop run as the rules see it."""
    offered_rps: float
    achieved_rps: float        # 2xx answers per second
    p99_ms: float | None       # None: nothing completed
    errors: int = 0            # non-2xx answers, socket errors, scheduled requests left unanswered

    def passes(self, objective_ms: float) -> bool:
        return (self.errors == 0 and self.p99_ms is not None and self.p99_ms <= objective_ms
                and self.achieved_rps >= (1.0 - ACHIEVED_TOLERANCE) * self.offered_rps)


def point_of(record: dict) -> Point:
    """A runs.jsonl record of an open-loop run as the rules see it: goodput as the achieved rate,
    p99 of the measured latencies, every non-2xx answer and client-side error (for the open-loop
    client: scheduled requests left unanswered) as errors."""
    client = record["client"]
    p99 = (client.get("latency_us") or {}).get("p99")
    socket_errors = sum(v for k, v in client["errors"].items() if k != "status")
    offered = record.get("offered_rps") or client.get("offered_rps")
    return Point(offered_rps=float(offered), achieved_rps=client.get("goodput_rps") or 0.0,
                 p99_ms=p99 / 1000.0 if p99 is not None else None,
                 errors=int(client.get("non2xx", 0) + socket_errors))


@dataclass(frozen=True)
class Capacity:
    objective_ms: float
    rps: float | None             # the capacity; None when even the lowest rate fails
    bound: str                    # "bracketed" | "at least" (every rate passed) | "below" (none did)
    lowest_failing: float | None  # the measured rate just above it
    lowest_measured: float | None
    non_monotone: tuple[float, ...] = ()  # passing rates above a failing one

    @property
    def bracketed(self) -> bool:
        return self.bound == "bracketed"

    def describe(self) -> str:
        if self.bound == "below":
            return f"< {self.lowest_measured:,.0f}" if self.lowest_measured else "n/a"
        if self.bound == "at least":
            return f">= {self.rps:,.0f}"
        return f"{self.rps:,.0f}"


def capacity(points: list[Point], objective_ms: float) -> Capacity:
    """The highest passing rate below the lowest failing one."""
    ordered = sorted(points, key=lambda p: p.offered_rps)
    if not ordered:
        return Capacity(objective_ms, None, "below", None, None)
    best, failing = None, None
    for point in ordered:
        if point.passes(objective_ms):
            best = point.offered_rps
        else:
            failing = point.offered_rps
            break
    above = tuple(p.offered_rps for p in ordered
                  if failing is not None and p.offered_rps > failing and p.passes(objective_ms))
    lowest = ordered[0].offered_rps
    if best is None:
        return Capacity(objective_ms, None, "below", failing, lowest, above)
    if failing is None:
        return Capacity(objective_ms, best, "at least", None, lowest, above)
    return Capacity(objective_ms, best, "bracketed", failing, lowest, above)


def next_rate(points: list[Point], objective_ms: float,
              resolution: float = REFINE_RESOLUTION) -> float | None:
    """The rate to run next to narrow the capacity: bisection between the highest passing rate and
    the lowest failing one; half the lowest rate when even that failed (down to 1 req/s); None when
    every rate passed or the bracket is narrow enough."""
    cap = capacity(points, objective_ms)
    if cap.bound == "below":
        half = math.floor(cap.lowest_measured / 2)
        return float(half) if half >= 1 else None
    if not cap.bracketed:
        return None
    low, high = cap.rps, cap.lowest_failing
    if high - low <= resolution * high:
        return None
    return round((low + high) / 2.0)


def refine(points: list[Point], objective_ms: float, runs: int,
           measure: Callable[[float], Point]) -> list[Point]:
    """Up to `runs` more measurements by bisection (next_rate); the points with them added."""
    points = list(points)
    for _ in range(runs):
        rate = next_rate(points, objective_ms)
        if rate is None:
            break
        points.append(measure(rate))
    return points


def ladder(closed_loop_max_rps: float, shares: tuple[float, ...] = LADDER_SHARES) -> list[float]:
    """Offered rates from the closed-loop maximum (whole requests per second, at least 1)."""
    return [float(max(1, round(share * closed_loop_max_rps))) for share in shares]


def duration_s(rate: float, min_requests: int = MIN_REQUESTS, low: int = MIN_DURATION_S,
               high: int = MAX_DURATION_S) -> int:
    return int(min(high, max(low, math.ceil(min_requests / max(rate, 1e-9)))))


def servers_needed(target_rps: float, capacity_rps: float | None) -> int | None:
    if not capacity_rps:
        return None
    return math.ceil(target_rps / capacity_rps)


def generator_warning(offered_rps: float, limit_rps: float | None, tool: str,
                      share: float = GENERATOR_LIMIT_SHARE) -> str | None:
    """A warning when an offered rate approaches (or passes) what the generator itself sustains."""
    if not limit_rps:
        return None
    if offered_rps > share * limit_rps:
        return (f"offered {offered_rps:,.0f} req/s is {offered_rps / limit_rps:.0%} of {tool}'s own "
                f"measured limit ({limit_rps:,.0f} req/s against a trivial server): the generator "
                f"may shape this run's latency")
    return None
