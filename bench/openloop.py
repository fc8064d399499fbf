"""The open-loop load generator: requests at a fixed arrival rate, whatever the server answers.

wrk is a closed loop (a connection sends its next request when the last one has returned), so a
server that slows down also slows its load. Here requests are scheduled at `rate` per second from
the start of the run; a request whose turn comes while every connection is busy waits in the
generator, and its latency is counted from its scheduled time (coordinated omission corrected).

The tool is oha (`oha -q RATE --latency-correction`, a Rust/tokio client, pinned and installed by
scripts/install_loadgen.sh into .bench/tools/bin): the cheapest of the open-loop candidates that
`python -m bench.loadgen_compare` measures side by side (vegeta, oha, k6). Its bodies are the wrk
script's own request pool (`rankbench-ceiling --print-requests N` prints it: the same Park-Miller
generator, seed, id ranges and item count as wrk_scripts/rank.lua), `top_k` added; oha sends a
random line of that file per request, wrk sends the pool round-robin: the same requests, in
another order.

One run: oha runs for `duration_s` at `rate`, with `connections` connections (the most requests it
can have in flight; a scheduled request that finds them all busy waits for one, latency counted
from its schedule); its CPU is read from /proc at the start and at the end of its sending window
(what it costs to load, without its start-up and its final report); the per-request CSV becomes the
exact latency histogram (integer microseconds) of the completed requests; requests scheduled but not
completed by the end are counted apart (`not_completed`), as are those over the timeout.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from rankbench import config, histogram

TOOL = "oha"
VERSION = "1.16.0"          # scripts/install_loadgen.sh installs this one
TOOLS_BIN = config.BENCH_DIR / "tools" / "bin"
INSTALL_HINT = ("oha is not installed: run `bash scripts/install_loadgen.sh` (cargo install --locked "
                f"oha --version {VERSION} into .bench/tools; needs cargo)")
POOL_REQUESTS = 1000        # rank.lua's default pool
# The most requests in flight. A request scheduled while all are busy waits in oha (its latency
# still counts from its schedule), so the server sees arrivals continue through a stall of up to
# CONNECTIONS / rate: 0.5 s at 1,000/s, 46 ms at 11,000/s (twice the 25 ms objective). oha's CPU per
# request was the same at -c 32, 256 and 1024 (bench.loadgen_compare); 512 stays under the usual
# 1,024 open files of a server process.
CONNECTIONS = 512
THREADS = 1                 # oha's tokio worker threads (wrk runs with -t1 too)
TIMEOUT_S = 10.0            # wrk's --timeout in the bench
END_ALLOWANCE_S = 0.02      # the last 20 ms of a run: ticks oha may skip when it wakes late


class OpenLoopError(RuntimeError):
    pass


def find(tool: str = TOOL) -> Path | None:
    """The project's own install first (.bench/tools/bin), then PATH."""
    local = TOOLS_BIN / tool
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(tool)
    return Path(found) if found else None


def require() -> Path:
    binary = find()
    if binary is None:
        raise OpenLoopError(INSTALL_HINT)
    return binary


def version(binary: Path | None = None) -> str:
    binary = binary or find()
    if binary is None:
        return "missing"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "unknown"


# -- the requests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestShape:
    items: int
    top_k: int
    users: tuple[int, int]
    item_range: tuple[int, int]
    seed: int
    pool: int = POOL_REQUESTS

    def as_json(self) -> dict:
        return {"items": self.items, "top_k": self.top_k, "user_min": self.users[0],
                "user_max": self.users[1], "item_min": self.item_range[0],
                "item_max": self.item_range[1], "seed": self.seed, "pool": self.pool}


def request_bodies(shape: RequestShape) -> list[bytes]:
    """rank.lua's request pool for this shape, as JSON bodies, printed by rankbench-ceiling (the one
    Rust copy of the generator that tests/bench/test_ceiling_ids.py checks against wrk's)."""
    binary = config.CEILING_BINARY
    if not binary.exists():
        raise OpenLoopError(f"{binary.relative_to(config.ROOT)} is missing (it prints the wrk "
                            f"script's requests); run `make build`")
    argv = [str(binary), "--print-requests", str(shape.pool), "--items", str(shape.items),
            "--user-min", str(shape.users[0]), "--user-max", str(shape.users[1]),
            "--item-min", str(shape.item_range[0]), "--item-max", str(shape.item_range[1]),
            "--seed", str(shape.seed)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise OpenLoopError(f"rankbench-ceiling --print-requests failed: {out.stderr.strip()}")
    bodies = []
    for line in out.stdout.splitlines():
        request = json.loads(line)
        bodies.append(json.dumps({"user_id": request["user_id"], "item_ids": request["item_ids"],
                                  "top_k": shape.top_k}, separators=(",", ":")).encode())
    if len(bodies) != shape.pool:
        raise OpenLoopError(f"rankbench-ceiling printed {len(bodies)} requests, {shape.pool} asked")
    return bodies


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    """One body per line: oha's -Z file."""
    path.write_bytes(b"".join(body + b"\n" for body in bodies))
    return path


# -- one run ----------------------------------------------------------------------------------------
def command(binary: Path, url: str, *, rate: float, duration_s: float, connections: int,
            timeout_s: float, bodies: Path, output: Path, threads: int | None = None) -> list[str]:
    argv = [str(binary), "-z", f"{duration_s:g}s", "-q", f"{rate:g}", "--latency-correction",
            "-c", str(connections), "--no-tui", "-m", "POST", "-T", "application/json",
            "-Z", str(bodies), "-t", f"{timeout_s:g}s", "--wait-ongoing-requests-after-deadline",
            "--output-format", "csv", "-o", str(output)]
    if threads:
        argv += ["--worker-threads", str(threads)]
    return argv + [url]


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process and its threads (None once it has gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def parse_csv(path: Path) -> tuple[list[list[int]], dict[int, int], int, float]:
    """oha's per-request CSV -> (latency histogram [[us, count]], count by status, bytes, last start).

    Durations are from the scheduled start with --latency-correction; microseconds, rounded up (a
    value is never reported faster than it was)."""
    latencies: dict[int, int] = {}
    statuses: dict[int, int] = {}
    total_bytes = 0
    last_start = 0.0
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[:1] != ["request-start"]:
            raise OpenLoopError(f"{path.name}: not oha's CSV output (header {header!r})")
        for row in reader:
            if len(row) < 7:
                continue
            micros = math.ceil(float(row[4]) * 1e6)
            latencies[micros] = latencies.get(micros, 0) + 1
            status = int(row[6])
            statuses[status] = statuses.get(status, 0) + 1
            total_bytes += int(row[5])
            last_start = max(last_start, float(row[0]))
    return [[v, c] for v, c in sorted(latencies.items())], statuses, total_bytes, last_start


def client_record(*, rate: float, duration_s: float, connections: int, timeout_s: float,
                  hist: list[list[int]], statuses: dict[int, int], total_bytes: int,
                  threads: int | None) -> dict:
    """The contract's `client` object of an open-loop run (keys as wrk's, plus the open-loop ones).

    requests   completed responses (any status); rps their rate over the sending window
    scheduled  requests the schedule called for (rate x duration, whole requests)
    not_completed  requests scheduled before the last END_ALLOWANCE_S without a response: over the
               timeout, refused, or still waiting for a connection at the end (counted as
               errors.timeout: oha's CSV lists completed requests only, so these are not told apart)
    """
    requests = sum(statuses.values())
    non2xx = sum(c for s, c in statuses.items() if not 200 <= s < 300)
    # oha schedules ticks at i / rate for i = 0, 1, ... and stops at the first tick it wakes for
    # after the end: when its thread wakes late (a busy machine), the last few ticks are never sent.
    # Requests scheduled in the last END_ALLOWANCE_S are therefore not counted as scheduled, so
    # that the generator's own lag is not taken for requests the server left unanswered.
    scheduled = int(math.floor(rate * duration_s + 1e-9))
    expected = int(math.floor(rate * max(0.0, duration_s - END_ALLOWANCE_S) + 1e-9))
    not_completed = max(0, expected - requests)
    latency = histogram.summary(hist)
    latency.pop("min", None)
    errors = {"connect": 0, "read": 0, "write": 0, "status": non2xx, "timeout": not_completed}
    return {
        "tool": TOOL, "mode": "open-loop", "requests": requests,
        "rps": round(requests / duration_s, 2) if duration_s > 0 else 0.0,
        "non2xx": non2xx, "errors": errors, "latency_us": latency, "histogram": hist,
        "histogram_count": histogram.count(hist), "duration_s": float(duration_s),
        "bytes": total_bytes, "threads": threads or (os.cpu_count() or 1), "connections": connections,
        "offered_rps": rate, "scheduled": scheduled, "not_completed": not_completed,
        "end_allowance_s": END_ALLOWANCE_S,
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "timeout_s": timeout_s, "latency_from": "scheduled start (oha --latency-correction)",
    }


@dataclass
class WindowCpu:
    """The generator's CPU seconds in its sending window, read from /proc while it runs."""
    at_start: float | None = None
    at_end: float | None = None

    @property
    def cpu_s(self) -> float | None:
        if self.at_start is None or self.at_end is None:
            return None
        return max(0.0, self.at_end - self.at_start)


def watch_window(pid: int, started: float, duration_s: float, lead_s: float = 0.0) -> WindowCpu:
    """Read the process's CPU at `started + lead_s` and just before `started + duration_s`."""
    window = WindowCpu()
    delay = started + lead_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    window.at_start = process_cpu_s(pid)
    delay = started + duration_s - 0.02 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    window.at_end = process_cpu_s(pid)
    return window
