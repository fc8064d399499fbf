"""`python -m bench`: parse settings, run the study, turn every expected failure into one clear line.

Ctrl-C (SIGINT) and SIGTERM stop every process the harness started before it exits (130 / 143);
a second Ctrl-C during that cleanup is ignored so that the cleanup can finish.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from bench.procs import Supervisor
from bench.runner import Bench, BenchError
from bench.settings import SettingsError, resolve


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""




def run_study(tool: str, run: Callable[[], int], results_dir: Callable[[], Path | None],
              supervisor: Supervisor | None = None,
              expected: tuple[type[Exception], ...] = ()) -> int:
    """Run a study with the harness's signal handling and failure lines (bench, profile, slo):
    SIGINT/SIGTERM raise in the main thread so that the study stops what it started; an expected
    failure is one line on stderr (exit 1), an interrupt says what was stopped (exit 130 / 143)."""
    def on_signal(signum, frame):
        if supervisor is not None:
            supervisor.mark()
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run()  # a study stops everything it started, whatever happens
    except expected as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 1
    except BenchError as exc:
        for line in exc.describe():
            print(line.replace("bench: ", f"{tool}: ", 1), file=sys.stderr)
        if results_dir():
            print(f"{tool}: partial results kept in {results_dir()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        stopped = list(dict.fromkeys(supervisor.stopped_since_mark())) if supervisor else []
        what = f" ({', '.join(stopped)})" if stopped else ""
        where = f"; partial results in {results_dir()}" if results_dir() else ""
        print(f"{tool}: interrupted; stopped every process it had started{what}{where}",
              file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resolve_or_exit(tool: str, resolve: Callable[[list[str] | None], tuple],
                    argv: list[str] | None) -> tuple:
    """`resolve(argv)` of a study's command line (bench, profile, slo); a settings error is one line
    on stderr and exit status 2, as argparse exits for a bad flag."""
    try:
        return resolve(argv)
    except SettingsError as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None, registry=None) -> int:
    settings, args = resolve_or_exit("bench", resolve, argv)
    bench = Bench(settings, registry=registry, dry_run=args.dry_run)
    return run_study("bench", bench.run, lambda: bench.results_dir, bench.supervisor)
