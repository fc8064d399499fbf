"""`python -m bench`: parse settings, run the study, turn every expected failure into one clear line.

Ctrl-C (SIGINT) and SIGTERM stop every process the harness started before it exits (130 / 143);
a second Ctrl-C during that cleanup is ignored so that the cleanup can finish.
"""
from __future__ import annotations

import signal
import sys

from bench.runner import Bench, BenchError
from bench.settings import SettingsError, resolve


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""




def main(argv: list[str] | None = None, registry=None) -> int:
    try:
        settings, args = resolve(argv)
    except SettingsError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    bench = Bench(settings, registry=registry, dry_run=args.dry_run)

    def on_signal(signum, frame):
        bench.supervisor.mark()
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    previous_int = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        return bench.run()  # run() stops everything it started, whatever happens
    except BenchError as exc:
        for line in exc.describe():
            print(line, file=sys.stderr)
        if bench.results_dir:
            print(f"bench: partial results kept in {bench.results_dir}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        stopped = list(dict.fromkeys(bench.supervisor.stopped_since_mark()))
        what = f" ({', '.join(stopped)})" if stopped else ""
        where = f"; partial results in {bench.results_dir}" if bench.results_dir else ""
        print(f"bench: interrupted; stopped every process it had started{what}{where}",
              file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
