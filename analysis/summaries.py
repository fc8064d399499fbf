"""Per-server figures of one configuration, over its valid repeats.

Rules (the report's "How to read" repeats them):
- Invalid runs (any non-2xx response or socket error) are left out of every figure and listed apart;
  a server whose runs are all invalid keeps figures from them, which the report strikes through.
- Ratios of the whole (goodput, responses/s, cores used, peak RSS) are the median over repeats.
- Additive per-request figures (stage means, CPU microseconds per request) are pooled over repeats:
  total microseconds over total requests, so the parts of a breakdown add up to its whole.
- Latency percentiles, of the client and of each stage, come from the repeats' histograms merged into
  one (counts added) when every repeat carries one; otherwise they are the median over repeats of
  each run's own percentile, marked as such (never averaged), and a percentile no run recorded stays
  missing: it is never interpolated.
- Cores used = CPU seconds / the measured load window (not the harness's longer sampling window).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable

from rankbench import histogram as hist
from rankbench.contract import VARIANT_STAGES
from rankbench.thresholds import HISTOGRAM_COUNT_TOLERANCE

from analysis.findings import Finding

from analysis.load import (CEILING, HANDLER_TOTAL, MEASURED_STAGES, PGBENCH, RESOURCE_SIDES,
                           Config, Results, ResultsError, Run, ServerFacts)
from analysis.stats import Stat, median_stat, pooled, ratio_stat

PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)
# The percentiles wrk's done() reports (contract: client.latency_us); 100 is "max".
WRK_KEYS = {50: "p50", 75: "p75", 90: "p90", 95: "p95", 99: "p99", 99.9: "p99.9",
            99.99: "p99.99", 100: "max"}
STAGE_PERCENTILE_KEYS = {50: "p50_us", 90: "p90_us", 99: "p99_us", 100: "max_us"}
ROLE_ORDER = {"model": 0, "floor": 1, "unknown": 2, CEILING: 3, PGBENCH: 4}
REFERENCE_LABELS = {
    CEILING: "database ceiling (the servers' own database work, no HTTP, no model)",
    PGBENCH: "pgbench reference (text results)",
}


@dataclass
class ServerSummary:
    """Everything the report says about one server (or one reference) in one configuration."""

    config: Config
    server: str
    backend: str
    role: str                   # "model" | "floor" | "unknown" (facets unknown) | CEILING | PGBENCH
    facts: ServerFacts | None   # None for the references
    runs: tuple[Run, ...]       # the runs behind every figure: the valid ones (see all_invalid)
    invalid_runs: tuple[Run, ...]
    goodput: Stat
    rps: Stat
    cores: dict[str, Stat | None]
    rss_mb: dict[str, Stat | None]
    cpu_us_per_req: dict[str, Stat | None]
    latency_us: dict[float, Stat | None]
    latency_mean_us: Stat | None
    latency_merged: bool
    stage_mean_us: dict[str, Stat | None]       # MEASURED_STAGES + "total"
    stage_p99_us: dict[str, Stat | None]
    rest_of_handler_us: Stat | None
    outside_handler_us: Stat | None
    bytes_per_response: Stat | None
    requests: float
    errors: dict[str, float]
    non2xx: float

    @property
    def all_invalid(self) -> bool:
        """No valid run: the figures come from invalid runs and are shown struck through."""
        return not any(r.valid for r in self.runs)

    @property
    def is_reference(self) -> bool:
        return self.role in (CEILING, PGBENCH)

    @property
    def language(self) -> str | None:
        return self.facts.get("language") if self.facts else None

    @property
    def has_stages(self) -> bool:
        return self.stage_mean_us.get(HANDLER_TOTAL) is not None

    @property
    def display_name(self) -> str:
        if self.role == "floor":
            return f"{self.server} (floor)"
        if self.role == "unknown":
            return f"{self.server} (facets unknown)"
        if self.is_reference:
            return f"{self.server} ({self.runs[0].tool})"
        return self.server


@dataclass
class Summary:
    results: Results
    configs: list[Config]
    cells: dict[tuple[Config, str], ServerSummary]
    references: dict[tuple[Config, str], ServerSummary]   # (config, CEILING | PGBENCH)
    findings: list[Finding] = field(default_factory=list)
    pairs: list = field(default_factory=list)             # comparisons.FacetPair
    decompositions: list = field(default_factory=list)    # comparisons.Decomposition

    def servers_in(self, config: Config) -> list[ServerSummary]:
        cells = [c for (cfg, _), c in self.cells.items() if cfg == config]
        return sorted(cells, key=server_order)

    def server_names(self) -> list[str]:
        """Every HTTP server in the results, in report order (fixes its colour in figures)."""
        seen: dict[str, ServerSummary] = {}
        for cell in self.cells.values():
            seen.setdefault(cell.server, cell)
        return [c.server for c in sorted(seen.values(), key=server_order)]

    def reference_for(self, config: Config, kind: str) -> ServerSummary | None:
        if (config, kind) in self.references:
            return self.references[(config, kind)]
        # a reference may label its scenario differently: same items and concurrency, same work
        matches = [c for (cfg, k), c in self.references.items() if k == kind and
                   (cfg.candidates, cfg.concurrency) == (config.candidates, config.concurrency)]
        return matches[0] if len(matches) == 1 else None

    def references_for(self, config: Config) -> list[ServerSummary]:
        found = (self.reference_for(config, kind) for kind in (CEILING, PGBENCH))
        return [c for c in found if c is not None]

    def reference_share(self, cell: ServerSummary, kind: str) -> Stat | None:
        """Goodput as a share of a reference's (same round's repeats paired for the spread)."""
        reference = self.reference_for(cell.config, kind)
        return ratio_stat(cell.goodput, reference.goodput) if reference is not None else None

    def pairs_in(self, config: Config) -> list:
        return [p for p in self.pairs if p.config == config]

    def decompositions_in(self, config: Config) -> list:
        return [d for d in self.decompositions if d.config == config]

    @property
    def invalid_runs(self) -> list[Run]:
        return sorted((r for r in self.results.runs if not r.valid), key=lambda r: r.key)

    @property
    def repeats(self) -> list[int]:
        return sorted({len(c.runs) for c in self.cells.values()})


def server_order(cell: ServerSummary) -> tuple:
    return (ROLE_ORDER[cell.role], cell.language or "~", cell.server)


def summarize_cells(results: Results, findings: list[Finding]) -> Summary:
    """Every (configuration, server) and (configuration, reference) cell; findings met on the way
    are appended to `findings`."""
    groups: dict[tuple[Config, str], list[Run]] = defaultdict(list)
    for run in results.runs:
        groups[(run.config, run.server)].append(run)
    cells: dict[tuple[Config, str], ServerSummary] = {}
    references: dict[tuple[Config, str], ServerSummary] = {}
    for (config, server), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r.repeat)
        kinds = {r.reference for r in runs}
        if len(kinds) > 1:
            raise ResultsError(f"{runs[0].source}: the runs of {server} ({config.label}) mix "
                               f"clients: {sorted(r.tool for r in runs)}")
        kind = kinds.pop()
        facts = None if kind else results.servers.get(server)
        cell = summarize_server(config, server, runs, facts, kind, findings)
        if kind:
            references[(config, kind)] = cell
        else:
            cells[(config, server)] = cell
    configs = sorted({cfg for cfg, _ in cells})
    if not configs:
        servers = ", ".join(sorted({r.server for r in results.runs}))
        raise ResultsError(f"{results.path}: nothing to report: no HTTP server was measured "
                           f"(runs of: {servers})")
    return Summary(results, configs, cells, references, findings)


def summarize_server(config: Config, server: str, all_runs: list[Run], facts: ServerFacts | None,
                     reference: str | None, findings: list[Finding]) -> ServerSummary:
    where = f"{server} ({config.label})"
    valid = [r for r in all_runs if r.valid]
    runs = valid or all_runs
    backends = {r.backend for r in runs}
    if len(backends) > 1:
        findings.append(Finding("analysis", where,
                                f"repeats disagree on the backend: {sorted(backends)}"))
    unknown = sorted({name for r in runs for name in r.stages}
                     - {*MEASURED_STAGES, HANDLER_TOTAL, *VARIANT_STAGES})
    if unknown:
        findings.append(Finding("analysis", where,
                                f"stages outside the contract ({', '.join(unknown)}) are counted "
                                f"in the rest of the handler"))
    repeats = [r.repeat for r in runs]
    latency, merged = latency_percentiles(runs, where, findings)
    stage_mean = {name: stage_mean_stat(runs, name) for name in (*MEASURED_STAGES, HANDLER_TOTAL)}
    latency_mean = pooled([(r.latency_us.get("mean"), r.requests) for r in runs], repeats)
    role = reference or (facts.role if facts is not None and facts.known else "unknown")
    return ServerSummary(
        config=config, server=server, backend=runs[0].backend, role=role, facts=facts,
        runs=tuple(runs), invalid_runs=tuple(r for r in all_runs if not r.valid),
        goodput=median_stat((r.goodput_rps for r in runs), repeats),
        rps=median_stat((r.rps for r in runs), repeats),
        cores={side: median_stat((r.cores_used(side) for r in runs), repeats)
               for side in RESOURCE_SIDES},
        rss_mb={side: median_stat((r.side(side, "rss_peak_mb") for r in runs), repeats)
                for side in RESOURCE_SIDES},
        cpu_us_per_req={side: pooled([(r.cpu_us_per_req(side), r.requests) for r in runs],
                                     repeats) for side in RESOURCE_SIDES},
        latency_us=latency, latency_mean_us=latency_mean, latency_merged=merged,
        stage_mean_us=stage_mean,
        stage_p99_us={name: stage_percentile(runs, name, 99, where, findings)
                      for name in (*MEASURED_STAGES, HANDLER_TOTAL)},
        rest_of_handler_us=_rest_of_handler(stage_mean),
        outside_handler_us=_outside_handler(latency_mean, stage_mean.get(HANDLER_TOTAL)),
        bytes_per_response=median_stat((r.bytes_per_response for r in runs), repeats),
        requests=sum(r.requests for r in all_runs),
        errors={kind: sum(r.errors.get(kind, 0) for r in all_runs)
                for kind in sorted({k for r in all_runs for k in r.errors})},
        non2xx=sum(r.non2xx for r in all_runs),
    )


def stage_mean_stat(runs: list[Run], name: str) -> Stat | None:
    """Pooled mean microseconds of one stage; None when a run did not record the stage."""
    sums, counts = [], []
    for run in runs:
        stats = run.stages.get(name)
        count = stats.get("count") if stats else None
        if not count:
            return None
        total = stats.get("sum_us")
        if total is None and "mean_us" in stats:
            total = stats["mean_us"] * count
        if total is None:
            return None
        sums.append(total)
        counts.append(count)
    if not sums:
        return None
    return Stat(sum(sums) / sum(counts), tuple(s / c for s, c in zip(sums, counts)), "pooled",
                tuple(r.repeat for r in runs))


def _rest_of_handler(stage_mean: dict[str, Stat | None]) -> Stat | None:
    """Handler total minus its measured stages (routing, validation glue, awaits, writes)."""
    total = stage_mean.get(HANDLER_TOTAL)
    if total is None:
        return None
    present = [name for name in MEASURED_STAGES if stage_mean.get(name) is not None]
    value = total.value - sum(stage_mean[name].value for name in present)
    per_run = tuple(t - sum(stage_mean[name].values[i] for name in present)
                    for i, t in enumerate(total.values))
    return Stat(value, per_run, "pooled", total.repeats)


def _outside_handler(latency_mean: Stat | None, total: Stat | None) -> Stat | None:
    """Client-seen mean latency minus handler time: network, queueing, HTTP framing."""
    if latency_mean is None or total is None:
        return None
    per_run = tuple(c - t for c, t in zip(latency_mean.values, total.values))
    return Stat(latency_mean.value - total.value, per_run, "pooled", total.repeats)


def merged_percentiles(histograms: list[hist.Histogram],
                       percentiles: Iterable[float] = PERCENTILES) -> dict[float, float]:
    """Percentiles of all requests of all the given histograms together (counts added)."""
    return hist.merge(histograms).percentiles(percentiles)


def latency_percentiles(runs: list[Run], where: str, findings: list[Finding]
                        ) -> tuple[dict[float, Stat | None], bool]:
    histograms = [r.histograms.get("client") for r in runs]
    have = [h for h in histograms if h is not None]
    if have and len(have) < len(runs):
        findings.append(Finding("analysis", where,
                                f"only {len(have)} of {len(runs)} repeats carry a latency histogram;"
                                f" percentiles fall back to medians over repeats"))
    for run, histogram in zip(runs, histograms):
        # The harness compares the two itself (and warns); repeat the check only for records
        # that carry no harness warning, e.g. from another harness.
        if (histogram is not None and run.requests and not run.warnings
                and abs(histogram.count - run.requests) > HISTOGRAM_COUNT_TOLERANCE * run.requests):
            findings.append(Finding("analysis", run.label,
                                    f"latency histogram holds {histogram.count} requests but the "
                                    f"run counted {run.requests:.0f}"))
    repeats = tuple(r.repeat for r in runs)
    maxima = [r.latency_us.get("max") for r in runs]
    exact_max = (Stat(max(maxima), tuple(maxima), "max", repeats)
                 if all(m is not None for m in maxima) else None)
    out: dict[float, Stat | None] = {}
    if len(have) == len(runs) and all(h.count for h in have):
        merged = merged_percentiles(have)
        per_run = [h.percentiles(PERCENTILES) for h in have]
        for p in PERCENTILES:
            out[p] = Stat(merged[p], tuple(r[p] for r in per_run), "merged", repeats)
        if exact_max is not None:
            out[100] = exact_max  # exact even when a histogram rounds values to buckets
        return out, True

    how = "median-of-runs" if len(runs) > 1 else "median"
    for p in PERCENTILES:
        if p == 100:
            out[p] = exact_max
            continue
        key = WRK_KEYS.get(p)
        stat = median_stat((r.latency_us.get(key) for r in runs), repeats) if key else None
        out[p] = replace(stat, how=how) if stat else None
    return out, False


def stage_percentile(runs: list[Run], name: str, percentile: float, where: str,
                     findings: list[Finding]) -> Stat | None:
    """A stage's percentile of all requests from the merged stage histograms when every run carries
    one (schema 2); else the median of the runs' own percentiles, marked as such."""
    if any(not (r.stages.get(name) or {}).get("count") for r in runs):
        return None
    repeats = tuple(r.repeat for r in runs)
    histograms = [r.histograms.get(f"stage:{name}") for r in runs]
    have = [h for h in histograms if h is not None and h.count]
    if len(have) == len(runs):
        merged = merged_percentiles(have, (percentile,))
        per_run = tuple(h.percentiles((percentile,))[percentile] for h in have)
        return Stat(merged[percentile], per_run, "merged", repeats)
    if have:
        findings.append(Finding("analysis", where,
                                f"only {len(have)} of {len(runs)} repeats carry a histogram of "
                                f"stage {name}; its p{percentile:g} is a median over repeats"))
    key = STAGE_PERCENTILE_KEYS[percentile]
    stat = median_stat(((r.stages.get(name) or {}).get(key) for r in runs), repeats)
    if stat is None:
        return None
    return replace(stat, how="median-of-runs" if len(runs) > 1 else "median")


@dataclass(frozen=True)
class PositionEffect:
    """One server's runs by position in their repeat's order: each run's goodput over its cell's
    median goodput, grouped by position (over every configuration)."""

    server: str
    ratios: dict[int, tuple[float, ...]]

    def median(self, position: int) -> float:
        return statistics.median(self.ratios[position])


def position_effects(summary: Summary) -> list[PositionEffect]:
    """Per server (and reference), when runs record their position."""
    by_server: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for cell in [*summary.cells.values(), *summary.references.values()]:
        if cell.all_invalid or not cell.goodput.value:
            continue
        for run in cell.runs:
            if run.position is not None:
                by_server[cell.server][run.position].append(run.goodput_rps / cell.goodput.value)
    return [PositionEffect(server, {p: tuple(v) for p, v in sorted(positions.items())})
            for server, positions in sorted(by_server.items())]


__all__ = ["PERCENTILES", "WRK_KEYS", "REFERENCE_LABELS", "PositionEffect", "ServerSummary",
           "Summary", "latency_percentiles", "merged_percentiles", "position_effects",
           "server_order", "stage_percentile", "summarize_cells", "summarize_server"]
