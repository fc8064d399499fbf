"""The language x runtime matrix of one configuration (issue 17), from the registry's facets.

Rows are the server stacks (language with its HTTP stack, interpreter and variant), columns the
runtimes (PyTorch, ONNX Runtime, Candle, no model); a cell is the one server with that stack and
that runtime. The language cost is then measured once per runtime held constant: every pair of the
configuration that differs in the language facet only (comparisons.facet_pairs), oriented so that
the first server is the one that spends more server CPU per request. Estimates agree when their
per-repeat ranges of the CPU difference overlap pairwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from rankbench.servers import FACETS

from analysis.comparisons import FacetPair, comparable
from analysis.load import Config
from analysis.stats import Stat, ratio_stat
from analysis.summaries import ServerSummary, Summary

RUNTIME_ORDER = ("torch", "onnxruntime", "candle", "none")
RUNTIME_LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "candle": "Candle",
                  "none": "no model"}
NO_VALUE = "-"  # the registry's value of a facet that does not apply (a Rust server's interpreter)


@dataclass
class LanguageCost:
    """One estimate of the language cost: the same runtime, the two stacks."""

    runtime: str
    slower: ServerSummary           # the one with more server CPU per request
    faster: ServerSummary
    cpu_delta_us: Stat              # server CPU µs/request, slower - faster
    cpu_ratio: Stat | None          # slower / faster
    goodput_ratio: Stat | None      # faster / slower


@dataclass
class Matrix:
    config: Config
    rows: list[str]                                  # stack labels, in report order
    columns: list[str]                               # runtimes present, RUNTIME_ORDER first
    cells: dict[tuple[str, str], ServerSummary]      # (row, runtime) -> server
    estimates: list[LanguageCost]

    def agreement(self) -> list[tuple[LanguageCost, LanguageCost, bool]]:
        """Every two estimates, and whether their CPU-difference ranges overlap."""
        return [(a, b, a.cpu_delta_us.overlaps(b.cpu_delta_us))
                for a, b in combinations(self.estimates, 2)]


def stack_label(facets: dict) -> str:
    """'python (uvloop-httptools, cpython-3.11)'; the variant only when it is not per-request."""
    details = [facets["http"]]
    if facets.get("interpreter") not in (None, NO_VALUE):
        details.append(facets["interpreter"])
    if facets.get("variant") not in (None, NO_VALUE, "per-request"):
        details.append(facets["variant"])
    return f"{facets['language']} ({', '.join(details)})"


def matrix(summary: Summary, config: Config) -> Matrix | None:
    """None unless the configuration has at least two stacks and one runtime measured on two."""
    cells = [c for c in summary.servers_in(config)
             if comparable(c) and c.role in ("model", "floor")
             and all(f in c.facts.facets for f in FACETS)]
    grid: dict[tuple[str, str], ServerSummary] = {}
    rows: list[str] = []
    for cell in cells:
        row = stack_label(cell.facts.facets)
        runtime = cell.facts.facets["runtime"]
        if (row, runtime) in grid:  # two servers with the same facets: the grid cannot hold both
            continue
        grid[(row, runtime)] = cell
        if row not in rows:  # cells come in report order: a row sits where its first server does
            rows.append(row)
    present = {runtime for _, runtime in grid}
    columns = [r for r in RUNTIME_ORDER if r in present] + sorted(present - set(RUNTIME_ORDER))
    estimates = [e for e in (_estimate(p) for p in summary.pairs_in(config)
                             if p.facet == "language") if e is not None]
    estimates.sort(key=lambda e: (RUNTIME_ORDER.index(e.runtime)
                                  if e.runtime in RUNTIME_ORDER else len(RUNTIME_ORDER), e.runtime))
    if len(rows) < 2 or not estimates:
        return None
    return Matrix(config, rows, columns, grid, estimates)


def _estimate(pair: FacetPair) -> LanguageCost | None:
    if pair.cpu_delta_us is None:
        return None
    slower, faster = pair.a, pair.b
    delta = pair.cpu_delta_us
    if delta.value < 0:
        slower, faster, delta = pair.b, pair.a, delta.scaled(-1)
    cpu_s, cpu_f = slower.cpu_us_per_req["server"], faster.cpu_us_per_req["server"]
    return LanguageCost(runtime=slower.facts.facets["runtime"], slower=slower, faster=faster,
                        cpu_delta_us=delta, cpu_ratio=ratio_stat(cpu_s, cpu_f),
                        goodput_ratio=ratio_stat(faster.goodput, slower.goodput))
