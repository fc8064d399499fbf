"""Settings of a profiling run: the bench's own settings (same variables, same parsers) with defaults
for short profiles, plus the profiler's rate. Defaults < environment variables < flags."""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from bench.profiling.tools import ProfilerConfig
from bench.settings import FLAG_NAMES, PARSERS, Settings, SettingsError

# One configuration, one repeat: every server runs once unprofiled and once profiled, 8 s each.
DEFAULTS = dict(profile="profile", items=(10,), concurrency=(32,), repeats=1, duration_s=8,
                warmup_s=3, ceiling=False, pgbench=False, verify=False)

# The bench's environment variables that mean the same here (bench/settings.py parses them).
ENV_VARS = {
    "SERVERS": "servers", "ITEMS": "items", "CONCURRENCY": "concurrency", "DURATION": "duration_s",
    "WARMUP": "warmup_s", "REPEATS": "repeats", "WORKERS": "workers", "POOL": "pool_size",
    "PIN": "pin", "TOP_K": "top_k", "WRK_THREADS": "wrk_threads", "SEED": "seed",
}
# Profiler settings from the environment: PERF_PERIOD_US (default 1000), PYSPY_RATE (default 200).
PROFILER_ENV = {"PERF_PERIOD_US": "perf_period_us", "PYSPY_RATE": "pyspy_rate"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Profile every server under the bench's wrk load: each server runs once "
                    "unprofiled and once under perf (+ py-spy for CPython < 3.12), its CPU is "
                    "attributed to named categories, and results/<stamp>-profile/ gets "
                    "profile.jsonl, flame graphs and profile.md.",
        epilog="Environment variables (flags win): " + ", ".join(f"{e}=" for e in
                                                                 [*ENV_VARS, *PROFILER_ENV]) + ".")
    for flag, dest, text in (
            ("--servers", "servers", "servers to profile (default: every registered server whose "
                                     "prerequisites exist)"),
            ("--items", "items", "candidate items per request (default 10)"),
            ("--concurrency", "concurrency", "wrk connections (default 32)"),
            ("--duration", "duration_s", "seconds of each window, unprofiled and profiled (default 8)"),
            ("--warmup", "warmup_s", "discarded warm-up seconds after start (default 3)"),
            ("--repeats", "repeats", "repeats; the unprofiled/profiled order flips each repeat"),
            ("--workers", "workers", "--workers of every server (default: cores given to the server)"),
            ("--pool", "pool_size", "--pool-size of every server (default 8)"),
            ("--pin", "pin", "1: pin the server to the first half of the cores"),
            ("--top-k", "top_k", "top_k of every request (default 10)"),
            ("--wrk-threads", "wrk_threads", "wrk -t (default 1)"),
            ("--seed", "seed", "seed of the request generator (default 1)")):
        parser.add_argument(flag, dest=dest, help=text)
    parser.add_argument("--perf-period-us", dest="perf_period_us", type=int,
                        help="CPU microseconds between two perf samples of a thread (default 1000: "
                             "1 kHz per busy core)")
    parser.add_argument("--pyspy-rate", dest="pyspy_rate", type=int,
                        help="py-spy samples per second (default 200)")
    parser.add_argument("--results", dest="results_root", type=Path,
                        help="folder that receives <UTC stamp>-profile/ (default results/)")
    parser.add_argument("--no-flamegraphs", dest="flamegraphs", action="store_false",
                        help="keep the collapsed stacks but do not render SVGs")
    parser.add_argument("--keep-perf-data", action="store_true",
                        help="keep perf.data files (tens of MB per server) in the results folder")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not write profile.md")
    parser.add_argument("--dry-run", action="store_true", help="check and print the plan, then exit")
    return parser


def resolve(argv: list[str] | None = None, environ: dict[str, str] | None = None
            ) -> tuple[Settings, ProfilerConfig, argparse.Namespace]:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    settings = Settings(**DEFAULTS)
    changes: dict = {}
    for env, key in ENV_VARS.items():
        raw = environ.get(env)
        if raw is not None and raw.strip():
            changes[key] = PARSERS[key](env, raw)
    for key in ENV_VARS.values():
        raw = getattr(args, key, None)
        if raw is not None:
            changes[key] = PARSERS[key](FLAG_NAMES.get(key, "--" + key.replace("_", "-")), str(raw))
    if args.results_root is not None:
        changes["results_root"] = args.results_root.resolve()
    changes["report"] = args.report
    settings = replace(settings, **changes)
    if settings.wrk_threads > min(settings.concurrency):
        raise SettingsError(f"wrk threads ({settings.wrk_threads}) must not exceed the lowest "
                            f"concurrency ({min(settings.concurrency)})")

    def number(flag_value, env: str, default: int, low: int, high: int) -> int:
        if flag_value is not None:
            value, name = flag_value, "--" + PROFILER_ENV[env].replace("_", "-")
        elif (environ.get(env) or "").strip():
            name = env
            try:
                value = int(environ[env])
            except ValueError:
                raise SettingsError(f"{env}: {environ[env]!r} is not an integer") from None
        else:
            return default
        if not low <= value <= high:
            raise SettingsError(f"{name}: {value} is outside {low}..{high}")
        return value

    period_us = number(args.perf_period_us, "PERF_PERIOD_US", 1000, 100, 100_000)
    rate = number(args.pyspy_rate, "PYSPY_RATE", 200, 1, 1000)
    config = ProfilerConfig(period_ns=period_us * 1000, pyspy_rate_hz=rate)
    return settings, config, args
