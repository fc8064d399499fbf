"""`python -m bench.profile`: where each server's CPU goes, under the bench's own load.

Every selected server runs once unprofiled and once under perf (kernel and user stacks; py-spy names
the Python frames on CPython < 3.12), on the same process, one after the other; its sampled CPU is
attributed to named categories (bench/profiling/rules.py) and results/<UTC stamp>-profile/ receives
env.json, profile.jsonl, flame graphs (flame/) and profile.md (analysis/profile_report.py).

Expected failures (profiling not permitted, a missing tool, a server that does not start) end with
one line on stderr and exit 1; Ctrl-C stops every process the run started (exit 130).
"""
from __future__ import annotations

import sys

from bench.cli import resolve_or_exit, run_study
from bench.profiling.session import ProfileSession
from bench.profiling.settings import resolve
from bench.profiling.tools import ProfilerUnavailable


def main(argv: list[str] | None = None, registry=None) -> int:
    settings, profiler, args = resolve_or_exit("profile", resolve, argv)
    session = ProfileSession(settings, profiler, registry=registry, flamegraphs=args.flamegraphs,
                             keep_perf_data=args.keep_perf_data)
    return run_study("profile", lambda: session.run(dry_run=args.dry_run),
                     lambda: session.folder.path if session.folder else None,
                     expected=(ProfilerUnavailable,))


if __name__ == "__main__":
    sys.exit(main())
