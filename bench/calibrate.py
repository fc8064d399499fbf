"""How fast the machine was today: a fixed CPU-bound loop in Python and the same loop in native code.

The same code on the same kind of machine gave very different CPU per request on different days
(shared, noisy VMs), so CPU per request compares only within one run. This calibration, measured just
before the runs and written into env.json, lets a reader (and `make compare`) see how fast the
machine was: both loops step the Park-Miller generator that the wrk script and the ceiling client
use (x = x * 48271 mod 2^31-1), the native one in rankbench-ceiling (`--calibrate N`).
Each figure is the median of 5 repeats, in nanoseconds per iteration.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import time

from rankbench import config

PYTHON_ITERATIONS = 200_000
NATIVE_ITERATIONS = 20_000_000
REPEATS = 5
LOOP = "Park-Miller step x = x * 48271 mod 2147483647"


def python_loop(iterations: int) -> int:
    x = 1
    for _ in range(iterations):
        x = x * 48271 % 2147483647
    return x


def python_ns_per_iter(iterations: int = PYTHON_ITERATIONS, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        python_loop(iterations)
        times.append((time.perf_counter_ns() - t0) / iterations)
    return round(statistics.median(times), 3)


def native_ns_per_iter(iterations: int = NATIVE_ITERATIONS, repeats: int = REPEATS
                       ) -> tuple[float | None, str | None]:
    """(ns per iteration, None) or (None, why it was not measured)."""
    binary = config.CEILING_BINARY
    if not binary.exists():
        return None, f"{binary.name} is missing (make build)"
    times = []
    for _ in range(repeats):
        try:
            out = subprocess.run([str(binary), "--calibrate", str(iterations)], capture_output=True,
                                 text=True, timeout=60)
            data = json.loads(out.stdout.strip().splitlines()[-1])
            times.append(float(data["ns_per_iter"]))
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError) as exc:
            return None, f"{binary.name} --calibrate failed: {type(exc).__name__}: {exc}"
    return round(statistics.median(times), 3), None


def measure() -> dict:
    native, why = native_ns_per_iter()
    out = {"python_ns_per_iter": python_ns_per_iter(), "native_ns_per_iter": native,
           "python_loop": f"{LOOP}, {PYTHON_ITERATIONS} iterations in CPython, median of {REPEATS}",
           "native_loop": f"{LOOP}, {NATIVE_ITERATIONS} iterations in Rust (rankbench-ceiling "
                          f"--calibrate), median of {REPEATS}",
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if why:
        out["native_not_measured"] = why
    return out


def show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
