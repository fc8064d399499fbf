"""Findings: what qualifies the figures of a results folder, each with where it applies and why.

The harness writes its own warnings into each record; they are listed as written. The analysis adds
what a single run cannot see (spread over repeats, a position effect in the run order, unequal
response sizes, a server above the database ceiling, unequal settings) and repeats the run-level
checks only for records that carry no harness warning at all. Thresholds are the harness's own
(rankbench.thresholds), so a run the harness flags is flagged here for the same reason.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

from rankbench.thresholds import (LOAD_SATURATED_CORES, OTHER_LOAD_SHARE, POSITION_EFFECT,
                                  RESPONSE_SIZE_TOLERANCE, SPREAD_WARNING)

if TYPE_CHECKING:  # summaries imports Finding from here
    from analysis.load import Config, Results, Run
    from analysis.summaries import PositionEffect, ServerSummary, Summary

HARNESS = "harness"
ANALYSIS = "analysis"


@dataclass(frozen=True)
class Finding:
    source: str   # HARNESS (written into the record) or ANALYSIS (found here)
    where: str
    text: str


def run_findings(runs: list[Run]) -> list[Finding]:
    """The harness's own warnings as written. The analysis repeats the run-level checks (errors,
    non-2xx, saturated load generator) only for records that carry no warning at all, e.g. from
    another harness: where the harness looked, its wording stands and nothing is said twice."""
    out: list[Finding] = []
    for run in sorted(runs, key=lambda r: r.key):
        out.extend(Finding(HARNESS, run.label, text) for text in run.warnings)
        if run.warnings:
            continue
        errors = {k: v for k, v in run.errors.items() if v}
        if errors:
            detail = ", ".join(f"{k} {v:.0f}" for k, v in errors.items())
            out.append(Finding(ANALYSIS, run.label,
                               f"{sum(errors.values()):.0f} client errors ({detail})"))
        if run.non2xx:
            out.append(Finding(ANALYSIS, run.label, f"{run.non2xx:.0f} responses were not 2xx"))
        load_cores = run.cores_used("load")
        per_thread = load_cores / (run.client_threads or 1) if load_cores is not None else None
        if per_thread is not None and per_thread > LOAD_SATURATED_CORES:
            out.append(Finding(ANALYSIS, run.label,
                               f"the load generator ({run.tool}) used {per_thread:.0%} of a core "
                               f"per thread: it may have been the bottleneck"))
        if not run.requests:
            out.append(Finding(ANALYSIS, run.label, "no request completed"))
    return out


def foreign_load_findings(runs: list[Run]) -> list[Finding]:
    """Processes outside the benchmark that used the machine during the runs (when records carry
    the machine's busy CPU time): those figures are disturbed by an amount nobody can tell.
    One line for the whole folder: the share of runs affected, the typical and the worst load."""
    foreign: list[tuple[float, Run]] = []
    measured = 0
    for run in runs:
        busy = run.side("machine", "busy_cpu_s")
        if busy is None:
            continue
        measured += 1
        # db_foreign: other clients' database backends, outside the benchmark like the rest
        ours = sum(figures.get("cpu_s", 0.0) for side, figures in run.resources.items()
                   if figures and side not in ("machine", "db_foreign"))
        # the machine's busy time is sampled over the harness's window, not the load window
        window = run.side("harness", "window_s") or run.load_window_s
        cores = (busy - ours) / window
        machine_cores = run.side("machine", "cores")
        if machine_cores and cores > OTHER_LOAD_SHARE * machine_cores:
            foreign.append((cores, run))
    if not foreign:
        return []
    foreign.sort(key=lambda item: item[0])
    worst_cores, worst = foreign[-1]
    machine = worst.side("machine", "cores")
    typical = statistics.median(cores for cores, _ in foreign)
    return [Finding(ANALYSIS, "machine",
                    f"processes outside the benchmark used more than {OTHER_LOAD_SHARE:.0%} of the "
                    f"machine during {len(foreign)} of {measured} runs (median {typical:.2f} cores, "
                    f"up to {worst_cores:.2f} ({worst_cores / machine:.0%} of the machine) in "
                    f"{worst.label}): those figures are disturbed by an unknown amount; rerun on a "
                    f"quiet machine before trusting them")]


def fairness_findings(runs: list[Run], settings: tuple[str, ...]) -> list[Finding]:
    """Every server of one configuration must have run with the same settings."""
    out: list[Finding] = []
    by_config: dict[Config, list[Run]] = defaultdict(list)
    for run in runs:
        if not run.is_reference:
            by_config[run.config].append(run)
    for config, group in sorted(by_config.items()):
        for attr in settings:
            servers_by_value: dict = defaultdict(set)
            for run in group:
                servers_by_value[getattr(run, attr)].add(run.server)
            if len(servers_by_value) > 1:
                detail = "; ".join(
                    f"{attr}={value}: {', '.join(sorted(servers_by_value[value]))}"
                    for value in sorted(servers_by_value, key=lambda v: (v is None, v)))
                out.append(Finding(ANALYSIS, config.label,
                                   f"servers ran with different {attr} ({detail}): "
                                   f"they are not compared on equal terms"))
    return out


def spread_findings(cell: ServerSummary) -> list[Finding]:
    checks = [("goodput", cell.goodput), ("p99 latency", cell.latency_us.get(99)),
              ("server CPU µs/request", cell.cpu_us_per_req.get("server"))]
    out = []
    for name, stat in checks:
        if stat is not None and stat.deviation is not None and stat.deviation > SPREAD_WARNING:
            out.append(Finding(ANALYSIS, f"{cell.server} ({cell.config.label})",
                               f"{name} varies by ±{stat.deviation:.0%} over {stat.n} repeats "
                               f"(above {SPREAD_WARNING:.0%}): differences between servers smaller "
                               f"than this are not significant"))
    return out


def position_findings(effects: list[PositionEffect]) -> list[Finding]:
    """A server whose runs at one position of the run order are faster than at another by more
    than POSITION_EFFECT (medians of run / cell median), beyond the spread: every run at the faster
    position above every run at the slower one. Needs two runs at each position to see a spread."""
    out = []
    for effect in effects:
        best = None
        for p, q in combinations(effect.ratios, 2):
            rp, rq = effect.ratios[p], effect.ratios[q]
            if len(rp) < 2 or len(rq) < 2:
                continue
            high, low = (p, q) if effect.median(p) >= effect.median(q) else (q, p)
            gap = effect.median(high) - effect.median(low)
            if (gap > POSITION_EFFECT and min(effect.ratios[high]) > max(effect.ratios[low])
                    and (best is None or gap > best[0])):
                best = (gap, high, low)
        if best is not None:
            gap, high, low = best
            out.append(Finding(ANALYSIS, effect.server,
                               f"position effect in the run order: runs at position {high} reach "
                               f"{effect.median(high):.0%} of their cell's median goodput, runs at "
                               f"position {low} {effect.median(low):.0%} (a {gap:.0%} gap, above "
                               f"{POSITION_EFFECT:.0%}, and no run at position {low} reaches one at "
                               f"position {high}): the order the servers ran in moved its figures"))
    return out


def response_size_findings(results: Results) -> list[Finding]:
    """Servers that answer the same requests must send the same bodies: those with real scores
    among themselves, and the floors among themselves (verify.json, 200 fixed requests)."""
    from analysis.load import server_facts

    sizes = results.body_bytes()
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for name, size in sizes.items():
        facts = results.servers.get(name) or server_facts(name, results.env)
        if not facts.known:
            continue
        if facts.get("real_scores"):
            groups["servers with real scores"][name] = size
        elif facts.role == "floor":
            groups["floors"][name] = size
    out = []
    for group, members in sorted(groups.items()):
        if len(members) < 2 or min(members.values()) <= 0:
            continue
        low, high = min(members.values()), max(members.values())
        if (high - low) / low > RESPONSE_SIZE_TOLERANCE:
            detail = ", ".join(f"{name} {size:,.1f}" for name, size in sorted(members.items()))
            out.append(Finding(ANALYSIS, "verify",
                               f"{group} answer the same fixed requests with mean bodies of "
                               f"{detail} bytes ({(high - low) / low:.1%} apart, above "
                               f"{RESPONSE_SIZE_TOLERANCE:.0%}): they do not send equal work on "
                               f"the wire"))
    return out


def ceiling_findings(summary: Summary) -> list[Finding]:
    """A server above the database ceiling: the ceiling does the servers' database work and nothing
    else, so no server should exceed it; one that does means the ceiling is not a ceiling."""
    from analysis.load import CEILING

    out = []
    for config in summary.configs:
        ceiling = summary.reference_for(config, CEILING)
        if ceiling is None or ceiling.all_invalid:
            continue
        for cell in summary.servers_in(config):
            if not cell.all_invalid and cell.goodput.value > ceiling.goodput.value:
                out.append(Finding(ANALYSIS, f"{cell.server} ({config.label})",
                                   f"goodput {cell.goodput.value:,.0f}/s is above the database "
                                   f"ceiling's {ceiling.goodput.value:,.0f}/s "
                                   f"({cell.goodput.value / ceiling.goodput.value:.0%}): the "
                                   f"ceiling is not a ceiling here; its client does more (or other) "
                                   f"work than the servers' database work"))
    return out


__all__ = ["ANALYSIS", "HARNESS", "Finding", "ceiling_findings", "fairness_findings",
           "foreign_load_findings", "position_findings", "response_size_findings", "run_findings",
           "spread_findings"]
