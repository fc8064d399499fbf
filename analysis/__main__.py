"""`python -m analysis report RESULTS_DIR` and `python -m analysis compare A B`.

Expected problems (missing folder, unknown schema, malformed record) end with one line on stderr
and exit status 2; the report path (or the comparison) goes to stdout.
"""
from __future__ import annotations

import argparse
import sys

from analysis.load import ResultsError

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Reports and comparisons from rankbench results folders (results/<timestamp>/).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser("report", help="write report.md and figures into a results folder")
    report.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="a folder written by `make bench` (e.g. results/latest)")
    report.add_argument("--all", action="store_true", dest="all_configs",
                        help="full tables for every configuration, even in a large sweep")
    compare = commands.add_parser("compare", help="print ratios B/A per server and metric")
    compare.add_argument("a", metavar="A", help="the baseline results folder")
    compare.add_argument("b", metavar="B", help="the results folder to check against A")
    args = parser.parse_args(argv)

    try:
        if args.command == "report":
            from analysis import write_report
            path = write_report(args.results_dir, all_configs=args.all_configs)
            print(f"report: {path}")
        else:
            from analysis.aggregate import summarize
            from analysis.comparisons import compare as compare_summaries
            from analysis.format import render_compare
            from analysis.load import closed_loop, load_results
            a = summarize(closed_loop(load_results(args.a)))
            b = summarize(closed_loop(load_results(args.b)))
            sys.stdout.write(render_compare(a, b, *compare_summaries(a, b)))
    except ResultsError as exc:
        print(f"analysis: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # e.g. a read-only results folder
        print(f"analysis: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
