"""Turn a rankbench results folder into a report a person reads in two minutes.

Separate parts, after pyperf: `load` reads and validates `env.json` + `runs.jsonl` + `verify.json`
(and refuses a schema it does not know); `aggregate.summarize` turns runs into what the report says,
through `summaries` (per-server figures over valid repeats, with their spread, percentiles from
merged histograms), `comparisons` (pairs of servers that isolate one facet, two-step decompositions,
`compare`) and `findings`, on the primitives of `stats`; `format` and `figures` write Markdown and
PNGs.

    python -m analysis report RESULTS_DIR      # writes RESULTS_DIR/report.md and figures
    python -m analysis compare A B             # ratios B/A per server and metric, with the spread
"""
from __future__ import annotations

from pathlib import Path

from rankbench.contract import SUPPORTED_SCHEMAS


def write_report(results_dir: str | Path, *, all_configs: bool = False) -> Path:
    """Load, aggregate and format one results folder; return the path of report.md.

    The harness calls this at the end of `make bench` (or runs `python -m analysis report DIR`).
    Raises `analysis.load.ResultsError` with a one-line message when the folder cannot be read.
    """
    from analysis.aggregate import summarize
    from analysis.format import write_report as _write
    from analysis.load import closed_loop, load_results

    results = closed_loop(load_results(results_dir))
    return _write(summarize(results), all_configs=all_configs)


__all__ = ["SUPPORTED_SCHEMAS", "write_report"]
