"""wrk: the command line, and the one JSON line that the scenario scripts print from done()."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from rankbench import histogram
from rankbench.config import ROOT

SCRIPTS_DIR = ROOT / "wrk_scripts"
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


class WrkOutputError(ValueError):
    pass


def script_path(scenario: str) -> Path:
    return SCRIPTS_DIR / f"{scenario}.lua"


def command(url: str, scenario: str, *, threads: int, connections: int, duration_s: int,
            timeout_s: int, script_args: dict[str, int]) -> list[str]:
    wrk = shutil.which("wrk") or "wrk"
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", f"--timeout", f"{timeout_s}s",
            "-s", str(script_path(scenario)), url]
    if script_args:
        argv.append("--")
        argv += [f"{key}={value}" for key, value in script_args.items()]
    return argv


def version() -> str:
    out = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def last_json_line(text: str, tool: str, required: tuple[str, ...]) -> dict:
    """The last line of a load tool's output that is its JSON object `{"tool":"<tool>", ...}`;
    ValueError (saying what is wrong) when there is none or it lacks a required key."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(f'{{"tool":"{tool}"'):
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{tool}'s JSON line is not valid JSON: {exc}") from None
            missing = [k for k in required if k not in data]
            if missing:
                raise ValueError(f"{tool}'s JSON line lacks {', '.join(missing)}")
            return data
    raise ValueError(f"{tool} printed no JSON line")


def parse_output(text: str) -> dict:
    """The JSON line printed by a scenario's done()."""
    try:
        return last_json_line(text, "wrk", ("requests", "duration_us", "errors", "histogram"))
    except ValueError as exc:
        hint = (" (is the scenario's done() missing, or did wrk fail before the run?)"
                if "printed no" in str(exc) else "")
        raise WrkOutputError(f"{exc}{hint}") from None


def client_record(data: dict, connections: int) -> dict:
    """The contract's `client` object from a parsed wrk line.

    `histogram` and `latency_us` are the measured latencies: wrk's coordinated-omission correction is
    undone (see rankbench/histogram.py), so the histogram holds exactly one value per recorded response,
    like pgbench's. wrk's own corrected figures are kept as `latency_us_wrk_corrected`, with the
    interval needed to re-apply the correction (`histogram.co_correct`)."""
    requests = int(data["requests"])
    duration_us = int(data["duration_us"])
    duration_s = duration_us / 1e6
    errors = {kind: int(data["errors"].get(kind, 0)) for kind in ERROR_KINDS}
    corrected = [[int(v), int(c)] for v, c in data["histogram"]]
    interval = histogram.co_interval(duration_us, requests, connections)
    try:
        measured = histogram.co_uncorrect(corrected, interval)
    except ValueError as exc:
        raise WrkOutputError(f"{exc} (was -c {connections} the connection count of this run?)") from None
    latency = histogram.summary(measured)
    latency.pop("min", None)
    wrk_latency = dict(data.get("latency_us") or {})
    wrk_latency.pop("min", None)
    return {
        "tool": "wrk",
        "requests": requests,
        "rps": round(requests / duration_s, 2) if duration_s > 0 else 0.0,
        # wrk counts status > 399 as errors.status: that is every non-2xx the contract can send.
        "non2xx": errors["status"],
        "errors": errors,
        "latency_us": latency,
        "histogram": measured,
        "histogram_count": histogram.count(measured),
        "latency_us_wrk_corrected": wrk_latency,
        "co_interval_us": interval,
        "duration_s": round(duration_s, 6),
        "bytes": int(data.get("bytes", 0)),
        "threads": int(data.get("threads", 1)),
        "connections": connections,
        "script_config": data.get("config", {}),
        "cpu_s": data.get("cpu_s"),
    }


def window_cpu_s(data: dict) -> float | None:
    """wrk's CPU seconds between the end of init() and the start of done(): the load itself,
    without building the request pool or printing the histogram (both reported by rank.lua)."""
    cpu = data.get("cpu_s")
    if not isinstance(cpu, dict) or "after_init" not in cpu or "at_done" not in cpu:
        return None
    return max(0.0, float(cpu["at_done"]) - float(cpu["after_init"]))
