"""Exact latency histograms as [[value_us, count], ...] sorted by value.

wrk records every latency in microseconds in an array indexed by value, so its histogram is exact;
pgbench's per-transaction log is turned into the same form. Percentiles use wrk's definition (the
smallest value whose cumulative count reaches round(p/100 * n + 0.5)), so that figures computed here
from pgbench logs, or from histograms merged over repeats, mean the same as wrk's own.

Before done() runs, wrk 4 applies a coordinated-omission correction to its histogram (stats_correct
in wrk's stats.c): with e = runtime_us // (requests // connections), every recorded value n adds its
count again at n - e, n - 2e, ... while above e. So the histogram a Lua script sees holds more values
than requests were made, and wrk's percentiles include those synthetic values. `co_uncorrect`
inverts the correction exactly (the values it adds to m all come from values above m in the same
residue class mod e), giving the measured latencies; `co_correct` re-applies it.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
               ("p99.9", 99.9), ("p99.99", 99.99))

Histogram = list[list[int]]


def from_values(values: Iterable[int]) -> Histogram:
    return [[value, count] for value, count in sorted(Counter(values).items())]


def merge(*histograms: Histogram) -> Histogram:
    total: Counter = Counter()
    for hist in histograms:
        for value, count in hist:
            total[value] += count
    return [[value, count] for value, count in sorted(total.items())]


def count(hist: Histogram) -> int:
    return sum(c for _, c in hist)


def percentile(hist: Histogram, p: float) -> int:
    n = count(hist)
    if n == 0:
        raise ValueError("percentile of an empty histogram")
    # wrk: rank = round((p / 100.0) * count + 0.5), C round() (halves away from zero)
    rank = math.floor(p / 100.0 * n + 0.5 + 0.5)
    cumulative = 0
    for value, c in hist:
        cumulative += c
        if cumulative >= rank:
            return value
    return hist[-1][0]


def summary(hist: Histogram) -> dict:
    """mean, stdev (sample, as wrk), max and the contract's percentiles, in microseconds."""
    n = count(hist)
    if n == 0:
        return {}
    mean = sum(v * c for v, c in hist) / n
    var = sum(c * (v - mean) ** 2 for v, c in hist) / (n - 1) if n > 1 else 0.0
    out = {"min": hist[0][0], "mean": round(mean, 3), "stdev": round(math.sqrt(var), 3),
           "max": hist[-1][0]}
    for name, p in PERCENTILES:
        out[name] = percentile(hist, p)
    return out


def co_interval(duration_us: int, requests: int, connections: int) -> int | None:
    """wrk's expected interval: runtime_us / (complete / connections), in integer arithmetic."""
    per_connection = requests // connections if connections else 0
    if per_connection <= 0:
        return None
    return duration_us // per_connection


def _by_residue(hist: Histogram, interval: int) -> dict[int, list[list[int]]]:
    classes: dict[int, list[list[int]]] = {}
    for value, c in hist:
        classes.setdefault(value % interval, []).append([value, c])
    return classes


def co_correct(hist: Histogram, interval: int | None) -> Histogram:
    """wrk's stats_correct: each value n adds its count at n - k*interval for every such value > interval."""
    if not interval:
        return [list(pair) for pair in hist]
    out: dict[int, int] = {v: c for v, c in hist}
    for values in _by_residue(hist, interval).values():
        values.sort(reverse=True)
        running = 0  # counts of the raw values above the current one, in this residue class
        previous = None
        for value, c in values:
            if previous is not None:
                # every value between previous and value in steps of interval receives `running`
                for m in range(previous - interval, value, -interval):
                    if m > interval:
                        out[m] = out.get(m, 0) + running
            if value > interval:
                out[value] += running
            running += c
            previous = value
        if previous is not None:
            for m in range(previous - interval, interval, -interval):
                out[m] = out.get(m, 0) + running
    return [[v, c] for v, c in sorted(out.items())]


def co_uncorrect(hist: Histogram, interval: int | None) -> Histogram:
    """The measured histogram behind a wrk histogram that stats_correct has changed."""
    if not interval:
        return [list(pair) for pair in hist]
    raw: dict[int, int] = {}
    for values in _by_residue(hist, interval).values():
        values.sort(reverse=True)
        running = 0
        for value, c in values:
            own = c - running if value > interval else c
            if own < 0:
                raise ValueError(f"histogram is not a wrk-corrected one for interval {interval}: "
                                 f"value {value} holds {c} < {running} added from above")
            if own:
                raw[value] = own
            running += own
    return [[v, c] for v, c in sorted(raw.items())]
