"""Latency histograms from results records, merged across repeats by adding counts.

Two encodings are read, both in microseconds:
- `[[value_us, count], ...]`: what the harness writes (bench/histogram.py). wrk keeps every latency in
  a 1 µs array, so this is exact; a server with log buckets (py_servers/stats.py) can write each
  bucket's representative value the same way.
- an HdrHistogram V2 compressed base64 string (hdrh `encode()`, Java/Rust hdrhistogram
  `encodeIntoCompressedByteBuffer` + base64): each bucket becomes one pair at its highest
  equivalent value, which is what HdrHistogram itself reports for a percentile.

Percentiles follow wrk's definition, as the harness does: the smallest value whose cumulative count
reaches round(p/100 * n + 0.5) (C round, halves away from zero). On a single run this reproduces
the `latency_us` figures wrk and the harness print; merged, it is the same percentile of all requests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from hdrh.histogram import HdrHistogram


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
        out = {}
        for p in percentiles:
            rank = min(max(math.floor(p / 100.0 * n + 0.5 + 0.5), 1), n)
            out[p] = float(self.values[int(np.searchsorted(cumulative, rank))])
        return out

    def mean(self) -> float:
        return float(np.dot(self.values, self.counts) / self.count) if self.count else 0.0


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
