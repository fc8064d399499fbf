"""From validated runs to everything a report says: the one entry point of the analysis.

    summarize(results) -> Summary

Each step lives in its own module: `summaries` (per-server figures over valid repeats, with their
spread), `comparisons` (pairs that isolate one facet, two-step decompositions, `compare`),
`findings` (what qualifies the figures); `stats` holds the primitives they share.
"""
from __future__ import annotations

from analysis import comparisons, findings as checks
from analysis.findings import ANALYSIS, Finding
from analysis.load import Results
from analysis.summaries import Summary, position_effects, summarize_cells


def summarize(results: Results) -> Summary:
    found = [Finding(ANALYSIS, "results folder", note) for note in results.notes]
    summary = summarize_cells(results, found)
    for config in summary.configs:
        summary.pairs.extend(comparisons.facet_pairs(summary, config))
        summary.decompositions.extend(comparisons.decompositions(summary, config))
    found.extend(checks.run_findings(results.runs))
    found.extend(checks.foreign_load_findings(results.runs))
    found.extend(checks.fairness_findings(results.runs, comparisons.SETTINGS))
    for cell in [*summary.cells.values(), *summary.references.values()]:
        if not cell.all_invalid:
            found.extend(checks.spread_findings(cell))
    found.extend(checks.position_findings(position_effects(summary)))
    found.extend(checks.response_size_findings(results))
    found.extend(checks.ceiling_findings(summary))
    return summary


__all__ = ["summarize"]
