"""Latency histograms: one module for the harness, the analysis and the tests.

Two forms, both in microseconds:
- pairs `[[value_us, count], ...]` sorted by value: what the harness writes into runs.jsonl. wrk
  records every latency in an array indexed by value, so its histogram is exact; pgbench's and the
  ceiling client's logs, and the servers' stage histograms in /stats, are turned into the same form.
- `Histogram` (numpy arrays), what the analysis merges across repeats; `parse` also reads an
  HdrHistogram V2 compressed base64 string (each bucket at its highest equivalent value).

Percentiles follow wrk's definition everywhere (`rank`): the smallest value whose cumulative count
reaches round(p/100 * n + 0.5) (C round, halves away from zero). On a single run this reproduces
wrk's own `latency_us` figures; merged, it is the same percentile of all requests.

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
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
               ("p99.9", 99.9), ("p99.99", 99.99))

Pairs = list[list[int]]


def rank(p: float, n: int) -> int:
    """wrk's rank of percentile p among n values: round(p/100 * n + 0.5), C round, in 1..n."""
    return min(max(math.floor(p / 100.0 * n + 0.5 + 0.5), 1), n)


# -- pairs -------------------------------------------------------------------------------------
def from_values(values: Iterable[int]) -> Pairs:
    return [[value, count] for value, count in sorted(Counter(values).items())]


def merge_pairs(*histograms: Pairs) -> Pairs:
    total: Counter = Counter()
    for hist in histograms:
        for value, count in hist:
            total[value] += count
    return [[value, count] for value, count in sorted(total.items())]


def count(hist: Pairs) -> int:
    return sum(c for _, c in hist)


def percentile(hist: Pairs, p: float) -> int:
    n = count(hist)
    if n == 0:
        raise ValueError("percentile of an empty histogram")
    wanted = rank(p, n)
    cumulative = 0
    for value, c in hist:
        cumulative += c
        if cumulative >= wanted:
            return value
    return hist[-1][0]


def summary(hist: Pairs) -> dict:
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


def _by_residue(hist: Pairs, interval: int) -> dict[int, list[list[int]]]:
    classes: dict[int, list[list[int]]] = {}
    for value, c in hist:
        classes.setdefault(value % interval, []).append([value, c])
    return classes


def co_correct(hist: Pairs, interval: int | None) -> Pairs:
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


def co_uncorrect(hist: Pairs, interval: int | None) -> Pairs:
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


# -- Histogram (numpy) ----------------------------------------------------------------------
class HistogramError(ValueError):
    """The value is not a histogram in one of the two encodings (message says why)."""


@dataclass(frozen=True)
class Histogram:
    values: np.ndarray  # float64, strictly increasing
    counts: np.ndarray  # int64, > 0, same length

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def max(self) -> float:
        return float(self.values[-1]) if len(self.values) else 0.0

    def percentiles(self, percentiles: Iterable[float]) -> dict[float, float]:
        """{p: value} by wrk's rank; empty when the histogram holds nothing."""
        n = self.count
        if n == 0:
            return {}
        cumulative = np.cumsum(self.counts)
        return {p: float(self.values[int(np.searchsorted(cumulative, rank(p, n)))])
                for p in percentiles}
    def mean(self) -> float:
        return float(np.dot(self.values, self.counts) / self.count) if self.count else 0.0


    def to_pairs(self) -> Pairs:
        return [[int(v) if float(v).is_integer() else float(v), int(c)]
                for v, c in zip(self.values, self.counts)]


def merge(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram holding every count of the given ones (equal values add up)."""
    histograms = list(histograms)
    values = np.concatenate([h.values for h in histograms]) if histograms else np.empty(0)
    counts = np.concatenate([h.counts for h in histograms]) if histograms else np.empty(0, np.int64)
    unique, inverse = np.unique(values, return_inverse=True)
    summed = np.zeros(len(unique), dtype=np.int64)
    np.add.at(summed, inverse, counts)
    return Histogram(unique, summed)


def parse(value: Any) -> Histogram:
    """A Histogram from either encoding; HistogramError when it is neither."""
    if isinstance(value, str):
        return _from_hdr(value)
    if isinstance(value, list):
        return _from_pairs(value)
    raise HistogramError(f"expected [[value_us, count], ...] or an HdrHistogram string, "
                         f"got {type(value).__name__}")


def _from_pairs(pairs: list) -> Histogram:
    values, counts = [], []
    for i, pair in enumerate(pairs):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)):
            raise HistogramError(f"entry {i} is {pair!r}, not [value_us, count]")
        value, count = pair
        if not math.isfinite(value) or value < 0 or count < 0 or count != int(count):
            raise HistogramError(f"entry {i} is {pair!r}: value must be >= 0 and count a "
                                 f"whole number >= 0")
        if count:
            values.append(float(value))
            counts.append(int(count))
    return merge([Histogram(np.asarray(values, dtype=np.float64),
                            np.asarray(counts, dtype=np.int64))])


def _from_hdr(encoded: str) -> Histogram:
    if not encoded:
        raise HistogramError("empty string")
    from hdrh.histogram import HdrHistogram

    try:
        hdr = HdrHistogram.decode(encoded)
    except Exception as exc:  # hdrh raises binascii, zlib, ctypes and its own errors
        raise HistogramError(f"not a valid encoded HdrHistogram ({type(exc).__name__}: {exc})") \
            from None
    values, counts = [], []
    for index in range(hdr.counts_len):
        count = hdr.get_count_at_index(index)
        if count:
            values.append(hdr.get_highest_equivalent_value(hdr.get_value_from_index(index)))
            counts.append(count)
    return Histogram(np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.int64))
