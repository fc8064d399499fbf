"""Stage histograms shared by all worker processes of one server.

Every worker owns one slice of an anonymous shared memory map created before the workers fork, and
is its only writer, so recording needs no lock. Whichever worker answers `GET /stats` reads and merges
every slice. A slice is a set of log-scale buckets per stage (bucket width 2%, so the geometric
midpoint of a bucket is within 1% of any value in it) plus an exact count, sum and max.

Beside the histograms, each worker publishes its runtime's thread settings (a small JSON document
in a second shared map, one fixed-size slot per worker), so that /stats can show them for every
worker whichever worker answers.

`POST /stats/reset` bumps a global epoch instead of zeroing other workers' slices (that would race
with their writes): a worker whose slice carries an older epoch zeroes it before its next write,
and readers treat such a slice as empty.

The hot path (`record_request`) works on a memoryview of int64 with plain Python ints: a numpy
scalar update costs several times more.

The micro-batching variant (py_servers/batching.py) records its requests over BATCH_STAGES (STAGES
with `queue` after `parse`) and, once per batch, `record_batch`: the batch's size (one counter per
size up to --max-batch), its inference rows and its own stage durations (PER_BATCH_STAGES), in a
block after the request stages that a per-request server does not have.
"""
from __future__ import annotations

import math
import mmap

import orjson

STAGES = ("parse", "db", "pre", "infer", "post", "total")
BATCH_STAGES = ("parse", "queue", "db", "pre", "infer", "post", "total")
PER_BATCH_STAGES = ("db", "pre", "infer", "post", "total")

BUCKET_RATIO = 1.02                       # relative bucket width; midpoint error <= sqrt(1.02)-1 < 1%
_INV_LOG_RATIO = 1.0 / math.log(BUCKET_RATIO)
N_BUCKETS = 1400                          # 1.02**1400 ns ~ 1e12 ns: anything longer lands in the last
_STAGE_WIDTH = 3 + N_BUCKETS              # (count: derived), sum_ns, max_ns, buckets...

# Global header (int64 slots).
_G_EPOCH = 0
_G_SLOTS = 8
# Per-worker control block: never cleared by a reset.
_C_PID, _C_READY, _C_POOL = 0, 1, 2
_C_SLOTS = 4
# Per-worker data block: cleared when the worker sees a newer epoch. Header, one row per stage,
# then (micro-batching only) the batch block: header, one row per batch stage, a count per size.
_D_EPOCH, _D_REQUESTS, _D_ERRORS = 0, 1, 2
_D_HEADER = 4
_B_BATCHES, _B_ROWS = 0, 1
_B_HEADER = 2
# Per-worker runtime report: 8-byte length, then that many bytes of JSON.
REPORT_BYTES = 4096


def bucket_of(ns: int) -> int:
    if ns < 1:
        return 0
    index = int(math.log(ns) * _INV_LOG_RATIO)
    return index if index < N_BUCKETS else N_BUCKETS - 1


def bucket_value(index: int) -> float:
    """Geometric midpoint of a bucket, in nanoseconds."""
    return BUCKET_RATIO ** (index + 0.5)


class SharedStats:
    """The shared map: create once in the parent, before forking the workers."""

    def __init__(self, workers: int, *, max_batch: int = 0):
        """max_batch > 0: a micro-batching server (BATCH_STAGES and the batch block)."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if max_batch < 0:
            raise ValueError("max_batch must be >= 0")
        self.workers = workers
        self.max_batch = max_batch
        self.stages = BATCH_STAGES if max_batch else STAGES
        self._stages_end = _D_HEADER + len(self.stages) * _STAGE_WIDTH
        batch_block = (_B_HEADER + len(PER_BATCH_STAGES) * _STAGE_WIDTH + max_batch + 1
                       if max_batch else 0)
        self._data_slots = self._stages_end + batch_block
        self._worker_slots = _C_SLOTS + self._data_slots
        self._map = mmap.mmap(-1, 8 * (_G_SLOTS + workers * self._worker_slots))
        self.view = memoryview(self._map).cast("q")
        self._reports = mmap.mmap(-1, REPORT_BYTES * workers)

    def _control(self, worker: int) -> int:
        return _G_SLOTS + worker * self._worker_slots

    def _data(self, worker: int) -> int:
        return self._control(worker) + _C_SLOTS

    def recorder(self, worker: int, *, timers: bool = True) -> "StatsRecorder":
        return StatsRecorder(self, worker, timers)

    # Readiness of each worker (for /health: the server is ready when every worker is).
    def set_worker(self, worker: int, *, pid: int, pool_size: int) -> None:
        base = self._control(worker)
        self.view[base + _C_PID] = pid
        self.view[base + _C_POOL] = pool_size

    def set_ready(self, worker: int, ready: bool) -> None:
        self.view[self._control(worker) + _C_READY] = 1 if ready else 0

    def is_ready(self, worker: int) -> bool:
        return self.view[self._control(worker) + _C_READY] == 1

    def ready_workers(self) -> int:
        return sum(self.is_ready(w) for w in range(self.workers))

    def reset(self) -> None:
        self.view[_G_EPOCH] += 1

    # Runtime thread settings, as each worker read them from its runtime.
    def set_runtime_threads(self, worker: int, report: dict) -> None:
        data = orjson.dumps(report)
        if len(data) > REPORT_BYTES - 8:
            data = orjson.dumps({"error": f"thread report of {len(data)} bytes does not fit "
                                          f"the {REPORT_BYTES - 8} reserved"})
        base = worker * REPORT_BYTES
        self._reports[base + 8:base + 8 + len(data)] = data
        self._reports[base:base + 8] = len(data).to_bytes(8, "little")

    def _worker_runtime_threads(self, worker: int) -> dict | None:
        base = worker * REPORT_BYTES
        size = int.from_bytes(self._reports[base:base + 8], "little")
        if size == 0:
            return None
        try:
            return orjson.loads(self._reports[base + 8:base + 8 + size])
        except orjson.JSONDecodeError:   # read while a restarted worker was rewriting it
            return {"error": f"worker {worker}'s thread report was being rewritten"}

    def runtime_threads(self) -> dict:
        """The workers' common report; if they differ, an error with each worker's own."""
        reports = [self._worker_runtime_threads(w) for w in range(self.workers)]
        known = [r for r in reports if r is not None]
        if not known:
            return {"error": "no worker has reported its thread settings yet"}
        if all(r == known[0] for r in known):
            return known[0]
        return {"error": "workers report different thread settings", "per_worker": reports}

    def snapshot(self) -> dict:
        """Merge all workers' current slices: requests, errors, per-worker figures, stages (and,
        micro-batching, `batches`: see `_batches`)."""
        import numpy as np

        epoch = self.view[_G_EPOCH]
        n_stages = len(self.stages)
        merged = np.zeros(self._data_slots, dtype=np.int64)
        requests = errors = 0
        per_worker = []
        for w in range(self.workers):
            control, data = self._control(w), self._data(w)
            entry = {"pid": self.view[control + _C_PID], "ready": self.view[control + _C_READY] == 1,
                     "pool_size": self.view[control + _C_POOL], "requests": 0, "errors": 0}
            if self.view[data + _D_EPOCH] == epoch:
                block = np.frombuffer(self._map, dtype=np.int64, count=self._data_slots,
                                      offset=8 * data).copy()
                entry["requests"] = int(block[_D_REQUESTS])
                entry["errors"] = int(block[_D_ERRORS])
                _merge_rows(merged[_D_HEADER:self._stages_end], block[_D_HEADER:self._stages_end],
                            n_stages)
                if self.max_batch:
                    _merge_batches(merged[self._stages_end:], block[self._stages_end:])
            requests += entry["requests"]
            errors += entry["errors"]
            per_worker.append(entry)
        stages = merged[_D_HEADER:self._stages_end].reshape(n_stages, _STAGE_WIDTH)
        stages[:, 0] = stages[:, 3:].sum(axis=1)
        out = {"requests": requests, "errors": errors, "per_worker": per_worker,
               "stages": {name: summarize(stages[i]) for i, name in enumerate(self.stages)}}
        if self.max_batch:
            out["batches"] = _batches(merged[self._stages_end:])
        return out


def _merge_rows(into, block, n_rows: int) -> None:
    """Add one worker's stage rows (count, sum, max, buckets) into `into`: sums add, maxima max."""
    import numpy as np

    rows, worker = into.reshape(n_rows, _STAGE_WIDTH), block.reshape(n_rows, _STAGE_WIDTH)
    rows[:, 1] += worker[:, 1]
    rows[:, 2] = np.maximum(rows[:, 2], worker[:, 2])
    rows[:, 3:] += worker[:, 3:]


def _merge_batches(into, block) -> None:
    stages_end = _B_HEADER + len(PER_BATCH_STAGES) * _STAGE_WIDTH
    into[:_B_HEADER] += block[:_B_HEADER]
    _merge_rows(into[_B_HEADER:stages_end], block[_B_HEADER:stages_end], len(PER_BATCH_STAGES))
    into[stages_end:] += block[stages_end:]


def _batches(block) -> dict:
    """The merged batch block: how many batches, of which sizes (requests per batch: the
    distribution as [[size, count], ...] and the mean), how many inference rows, and the per-batch
    stage durations (one sample per batch)."""
    stages_end = _B_HEADER + len(PER_BATCH_STAGES) * _STAGE_WIDTH
    batches, rows = int(block[_B_BATCHES]), int(block[_B_ROWS])
    sizes = block[stages_end:]
    requests = int((sizes * range(len(sizes))).sum())
    stage_rows = block[_B_HEADER:stages_end].reshape(len(PER_BATCH_STAGES), _STAGE_WIDTH)
    stage_rows[:, 0] = stage_rows[:, 3:].sum(axis=1)
    return {"batches": batches, "requests": requests,
            "mean_batch_size": round(requests / batches, 3) if batches else 0.0,
            "batch_sizes": [[size, int(count)] for size, count in enumerate(sizes.tolist()) if count],
            "rows": rows, "mean_rows": round(rows / batches, 3) if batches else 0.0,
            "batch_stages": {name: summarize(stage_rows[i])
                             for i, name in enumerate(PER_BATCH_STAGES)}}


def summarize(row) -> dict:
    """count/sum/mean/p50/p90/p99/max in microseconds from one stage row (count, sum, max, buckets),
    and the histogram they come from as [[value_us, count], ...]."""
    import numpy as np

    count, total_ns, max_ns = int(row[0]), int(row[1]), int(row[2])
    out = {"count": count, "sum_us": round(total_ns / 1000, 3),
           "mean_us": round(total_ns / count / 1000, 3) if count else 0.0}
    buckets = row[3:]
    cumulative = np.cumsum(buckets)
    for label, q in (("p50_us", 0.50), ("p90_us", 0.90), ("p99_us", 0.99)):
        if count == 0:
            out[label] = 0.0
            continue
        # Nearest rank, like HdrHistogram: the smallest value with at least q of the samples at or
        # below it. The midpoint of the top bucket can exceed the exact max: clamp to it.
        rank = max(1, math.ceil(q * count))
        index = int(np.searchsorted(cumulative, rank))
        out[label] = round(min(bucket_value(index), max_ns) / 1000, 3)
    out["max_us"] = round(max_ns / 1000, 3)
    out["histogram"] = histogram_pairs(buckets, max_ns)
    return out


def histogram_pairs(buckets, max_ns: int) -> list[list[int]]:
    """Non-empty buckets as [[value_us, count], ...], value ascending: each bucket at its midpoint
    clamped to the max (the value the percentiles use), rounded to the nearest microsecond (halves
    up, as candle_server does); buckets that round to the same microsecond are one pair. The harness
    merges these across runs."""
    import numpy as np

    filled = np.flatnonzero(buckets)
    if filled.size == 0:
        return []
    middle_ns = np.minimum(BUCKET_RATIO ** (filled + 0.5), max_ns)
    values_us = np.floor(middle_ns / 1000 + 0.5).astype(np.int64)      # non-decreasing
    first = np.flatnonzero(np.diff(values_us, prepend=-1))
    counts = np.add.reduceat(buckets[filled], first)
    return [[value, count] for value, count in zip(values_us[first].tolist(), counts.tolist())]


class StatsRecorder:
    """One worker's writer. `record_request` is called once per /rank request."""

    __slots__ = ("_view", "_base", "_end", "_batch", "_max_batch", "timers")

    def __init__(self, shared: SharedStats, worker: int, timers: bool):
        self._view = shared.view
        self._base = shared._data(worker)
        self._end = self._base + shared._data_slots
        self._batch = self._base + shared._stages_end          # the batch block (micro-batching)
        self._max_batch = shared.max_batch
        self.timers = timers

    def _sync_epoch(self) -> None:
        view, base = self._view, self._base
        epoch = view[_G_EPOCH]
        if view[base + _D_EPOCH] != epoch:
            for i in range(base + 1, self._end):
                view[i] = 0
            view[base + _D_EPOCH] = epoch

    def record_request(self, error: bool, stages: tuple | None = None) -> None:
        """Count one /rank request; `stages` holds a duration in ns (or None) per stage of the
        server (STAGES, or BATCH_STAGES when micro-batching)."""
        view, base = self._view, self._base
        if view[base + _D_EPOCH] != view[_G_EPOCH]:
            self._sync_epoch()
        view[base + _D_REQUESTS] += 1
        if error:
            view[base + _D_ERRORS] += 1
        if stages is None:
            return
        log, inv = math.log, _INV_LOG_RATIO
        row = base + _D_HEADER
        for ns in stages:
            # The stage's count is not written here: it is the sum of its buckets (snapshot()).
            if ns is not None:
                view[row + 1] += ns
                if ns > view[row + 2]:
                    view[row + 2] = ns
                index = int(log(ns) * inv) if ns > 0 else 0
                view[row + 3 + (index if index < N_BUCKETS else N_BUCKETS - 1)] += 1
            row += _STAGE_WIDTH

    def record_batch(self, size: int, rows: int, stages: tuple | None = None) -> None:
        """Count one batch of `size` requests and `rows` inference rows (micro-batching only);
        `stages` holds a duration in ns (or None) per entry of PER_BATCH_STAGES."""
        if not 1 <= size <= self._max_batch:
            raise ValueError(f"batch size {size} outside 1..{self._max_batch}")
        view, batch = self._view, self._batch
        if view[self._base + _D_EPOCH] != view[_G_EPOCH]:
            self._sync_epoch()
        view[batch + _B_BATCHES] += 1
        view[batch + _B_ROWS] += rows
        view[batch + _B_HEADER + len(PER_BATCH_STAGES) * _STAGE_WIDTH + size] += 1
        if stages is None:
            return
        row = batch + _B_HEADER
        for ns in stages:
            if ns is not None:
                view[row + 1] += ns
                if ns > view[row + 2]:
                    view[row + 2] = ns
                view[row + 3 + bucket_of(ns)] += 1
            row += _STAGE_WIDTH
