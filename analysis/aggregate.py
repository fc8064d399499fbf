"""From validated runs to the figures a report shows, with their run-to-run spread.

Rules (the report's "How to read" repeats them):
- Ratios of the whole (requests/s, cores used, peak RSS) are the median over repeats.
- Additive per-request figures (stage means, CPU microseconds per request) are pooled over repeats:
  total microseconds over total requests, so the parts of a breakdown add up to its whole.
- Latency percentiles come from the repeats' histograms merged into one (counts added) when every
  repeat carries one; otherwise they are the median over repeats of each run's own percentile,
  marked as such (never averaged), and a percentile no run recorded stays missing: it is never
  interpolated.
- Cores used = CPU seconds / wall seconds of the window the CPU was sampled in.
- Every figure keeps its per-repeat values; two figures whose min-max ranges overlap are not
  significantly different, and no winner is declared between them.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from rankbench import histogram as hist
from analysis.load import (HANDLER_TOTAL, RESOURCE_SIDES, STAGES, Config, Results, ResultsError,
                           Run)

PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)
# The percentiles wrk's done() reports (contract: client.latency_us); 100 is "max".
WRK_KEYS = {50: "p50", 75: "p75", 90: "p90", 95: "p95", 99: "p99", 99.9: "p99.9",
            99.99: "p99.99", 100: "max"}
STAGE_PERCENTILE_KEYS = {50: "p50_us", 90: "p90_us", 99: "p99_us", 100: "max_us"}

REFERENCE_SERVER = "candle"       # the Rust reference of the "Python overhead" section
PYTHON_PREFIX = "py-"
FLOOR_BACKEND = "none"            # DB + HTTP only, no model: each language's floor
ROLE_ORDER = {"model": 0, "floor": 1, "ceiling": 2}

SPREAD_WARNING = 0.10             # warn when a repeat deviates more than 10% from the median
LOAD_SATURATION_CORES = 0.90      # wrk above 90% of a core may be the bottleneck
HISTOGRAM_COUNT_TOLERANCE = 0.01

# Handler stages whose wall time approximates CPU time (they do not wait on anything). "db" waits
# for the pool and PostgreSQL, and the rest of the handler includes, in an asyncio server, the wait
# for the event loop to start or resume the handler: neither wall time says how much CPU was spent.
ATTRIBUTED_STAGES = ("parse", "pre", "infer", "post")
FOREIGN_CPU_WARNING = 0.10        # other processes above 10% of a core disturb the figures


@dataclass(frozen=True)
class Stat:
    """A figure over repeats. `value` is what the report prints; `values` are the per-repeat
    figures that give its spread; `how` says how `value` was obtained."""

    value: float
    values: tuple[float, ...]
    how: str  # "median" | "pooled" | "merged" | "median-of-runs" | "max" | "ratio"

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of the per-repeat values (sample stdev / mean)."""
        if self.n < 2:
            return None
        mean = statistics.fmean(self.values)
        return statistics.stdev(self.values) / mean if mean else None

    @property
    def deviation(self) -> float | None:
        """Largest relative distance of a repeat from the reported value (the printed "±")."""
        if self.n < 2 or not self.value:
            return None
        return max(abs(v - self.value) for v in self.values) / abs(self.value)

    def overlaps(self, other: "Stat") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def scaled(self, factor: float) -> "Stat":
        return replace(self, value=self.value * factor,
                       values=tuple(v * factor for v in self.values))


def median_stat(values: Iterable[float | None]) -> Stat | None:
    values = tuple(values)
    if not values or any(v is None for v in values):
        return None
    return Stat(statistics.median(values), values, "median")


def significant(a: Stat | None, b: Stat | None) -> bool | None:
    """True when the min-max ranges over repeats do not overlap; None when it cannot be told."""
    if a is None or b is None or a.n < 2 or b.n < 2:
        return None
    return not a.overlaps(b)


@dataclass
class ServerSummary:
    """Everything the report says about one server in one configuration."""

    config: Config
    server: str
    backend: str
    role: str        # "model" | "floor" | "ceiling"
    language: str    # "python" | "native"
    runs: tuple[Run, ...]
    rps: Stat
    cores: dict[str, Stat | None]
    rss_mb: dict[str, Stat | None]
    cpu_us_per_req: dict[str, Stat | None]
    latency_us: dict[float, Stat | None]
    latency_mean_us: Stat | None
    latency_merged: bool
    stage_mean_us: dict[str, Stat | None]       # STAGES + "total"
    stage_p99_us: dict[str, Stat | None]
    rest_of_handler_us: Stat | None
    outside_handler_us: Stat | None
    requests: float
    errors: dict[str, float]
    non2xx: float

    @property
    def has_stages(self) -> bool:
        return self.stage_mean_us.get(HANDLER_TOTAL) is not None

    @property
    def display_name(self) -> str:
        return f"{self.server} (floor)" if self.role == "floor" else self.server


@dataclass(frozen=True)
class Warning:
    source: str   # "harness" (written into the record) or "analysis" (found here)
    where: str
    text: str


@dataclass
class Overhead:
    """The server CPU one server spends per request beyond another, split by stage."""

    config: Config
    subject: ServerSummary
    reference: ServerSummary
    relation: str                      # "Rust reference" | "own floor" | "Rust floor"
    cpu_delta_us: float
    cpu_ratio: float | None
    significant: bool | None
    stage_delta_us: dict[str, float] | None   # ATTRIBUTED_STAGES, wall-clock means
    unattributed_us: float | None             # cpu delta minus the attributed stage deltas


@dataclass
class Verdict:
    text: str
    winner: str | None
    significant: bool | None


@dataclass
class Metric:
    """A per-server figure shared by the headline table and `compare`."""

    name: str
    get: Callable[["Summary", ServerSummary], Stat | None]
    higher_is_better: bool


@dataclass
class Summary:
    results: Results
    configs: list[Config]
    cells: dict[tuple[Config, str], ServerSummary]
    ceilings: dict[Config, ServerSummary]
    warnings: list[Warning] = field(default_factory=list)
    overheads: list[Overhead] = field(default_factory=list)

    def servers_in(self, config: Config) -> list[ServerSummary]:
        cells = [c for (cfg, _), c in self.cells.items() if cfg == config]
        return sorted(cells, key=_server_order)

    def server_names(self) -> list[str]:
        """Every HTTP server in the results, in report order (fixes its colour in figures)."""
        seen: dict[str, ServerSummary] = {}
        for cell in self.cells.values():
            seen.setdefault(cell.server, cell)
        return [c.server for c in sorted(seen.values(), key=_server_order)]

    def ceiling_for(self, config: Config) -> ServerSummary | None:
        if config in self.ceilings:
            return self.ceilings[config]
        # pgbench may label its scenario differently: same items and concurrency is the same work.
        matches = [c for cfg, c in self.ceilings.items()
                   if (cfg.candidates, cfg.concurrency) == (config.candidates, config.concurrency)]
        return matches[0] if len(matches) == 1 else None

    def ceiling_fraction(self, cell: ServerSummary) -> Stat | None:
        """Requests/s as a fraction of what PostgreSQL alone did with the same queries."""
        ceiling = self.ceiling_for(cell.config)
        if ceiling is None or not ceiling.rps.value:
            return None
        ceiling_by_repeat = {r.repeat: r.rps for r in ceiling.runs}
        paired = tuple(r.rps / ceiling_by_repeat[r.repeat] for r in cell.runs
                       if ceiling_by_repeat.get(r.repeat))
        # The value matches the printed medians; the spread pairs repeats of the same round.
        share = cell.rps.value / ceiling.rps.value
        return Stat(share, paired or (share,), "ratio")

    def overheads_in(self, config: Config) -> list[Overhead]:
        return [o for o in self.overheads if o.config == config]

    @property
    def repeats(self) -> list[int]:
        return sorted({len(c.runs) for c in self.cells.values()})


def _server_order(cell: ServerSummary) -> tuple:
    return (ROLE_ORDER[cell.role], cell.language != "python", cell.server)


def _role(runs: list[Run]) -> str:
    if any(r.is_ceiling for r in runs):
        return "ceiling"
    return "floor" if runs[0].backend == FLOOR_BACKEND else "model"


def _language(server: str) -> str:
    return "python" if server.startswith(PYTHON_PREFIX) else "native"


# --------------------------------------------------------------------------------------------
# Per-server figures


def summarize(results: Results) -> Summary:
    groups: dict[tuple[Config, str], list[Run]] = defaultdict(list)
    for run in results.runs:
        groups[(run.config, run.server)].append(run)

    warnings = [Warning("analysis", "results folder", note) for note in results.notes]
    cells: dict[tuple[Config, str], ServerSummary] = {}
    ceilings: dict[Config, ServerSummary] = {}
    for (config, server), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r.repeat)
        cell = _summarize_server(config, server, runs, warnings)
        if cell.role == "ceiling":
            ceilings[config] = cell
        else:
            cells[(config, server)] = cell

    configs = sorted({cfg for cfg, _ in cells})
    if not configs:
        servers = ", ".join(sorted({r.server for r in results.runs}))
        raise ResultsError(f"{results.path}: nothing to report: no HTTP server was measured "
                           f"(runs of: {servers})")
    summary = Summary(results, configs, cells, ceilings, warnings)
    for config in configs:
        summary.overheads.extend(_overheads(summary, config))
    warnings.extend(_run_warnings(results.runs))
    warnings.extend(_foreign_load_warnings(results.runs))
    warnings.extend(_fairness_warnings(results.runs))
    for cell in list(cells.values()) + list(ceilings.values()):
        warnings.extend(_spread_warnings(cell))
    return summary


def _summarize_server(config: Config, server: str, runs: list[Run],
                      warnings: list[Warning]) -> ServerSummary:
    backends = {r.backend for r in runs}
    if len(backends) > 1:
        warnings.append(Warning("analysis", f"{server} ({config.label})",
                                f"repeats disagree on the backend: {sorted(backends)}"))
    latency, merged = _latency_percentiles(runs, server, config, warnings)
    stage_mean = {name: _stage_mean(runs, name) for name in (*STAGES, HANDLER_TOTAL)}
    unknown = sorted({name for r in runs for name in r.stages} - {*STAGES, HANDLER_TOTAL})
    if unknown:
        warnings.append(Warning("analysis", f"{server} ({config.label})",
                                f"stages outside the contract ({', '.join(unknown)}) are counted "
                                f"in the rest of the handler"))
    latency_mean = _pooled(runs, lambda r: r.latency_us.get("mean"), lambda r: r.requests)
    return ServerSummary(
        config=config, server=server, backend=runs[0].backend, role=_role(runs),
        language=_language(server), runs=tuple(runs),
        rps=median_stat(r.rps for r in runs),
        cores={side: median_stat(_side(r, side, "cpu_s", lambda v, r=r: v / _wall_s(r))
                                 for r in runs) for side in RESOURCE_SIDES},
        rss_mb={side: median_stat(_side(r, side, "rss_peak_mb") for r in runs)
                for side in RESOURCE_SIDES},
        cpu_us_per_req={side: _pooled(runs, lambda r, s=side: _cpu_us_per_req(r, s),
                                      lambda r: r.requests) for side in RESOURCE_SIDES},
        latency_us=latency, latency_mean_us=latency_mean, latency_merged=merged,
        stage_mean_us=stage_mean,
        stage_p99_us={name: _stage_percentile(runs, name, 99) for name in (*STAGES, HANDLER_TOTAL)},
        rest_of_handler_us=_rest_of_handler(runs, stage_mean),
        outside_handler_us=_outside_handler(runs, latency_mean, stage_mean.get(HANDLER_TOTAL)),
        requests=sum(r.requests for r in runs),
        errors={kind: sum(r.errors.get(kind, 0) for r in runs)
                for kind in sorted({k for r in runs for k in r.errors})},
        non2xx=sum(r.non2xx for r in runs),
    )


def _side(run: Run, side: str, key: str, convert: Callable[[float], float] | None = None):
    figures = run.resources.get(side)
    if not figures or key not in figures:
        return None
    return convert(figures[key]) if convert else figures[key]


def _wall_s(run: Run) -> float:
    """The wall time CPU seconds were sampled over: the harness's sampling window when the record
    has it (resources.harness.window_s), else the load generator's measured duration, else the
    planned duration."""
    for value in (_side(run, "harness", "window_s"), run.client_duration_s):
        if value:
            return value
    return run.duration_s


def _cpu_us_per_req(run: Run, side: str) -> float | None:
    value = _side(run, side, "cpu_us_per_req")
    if value is None:
        cpu_s = _side(run, side, "cpu_s")
        value = cpu_s * 1e6 / run.requests if cpu_s is not None and run.requests else None
    return value


def _pooled(runs: list[Run], value: Callable[[Run], float | None],
            weight: Callable[[Run], float]) -> Stat | None:
    """Weighted mean over repeats (the mean over every request of every repeat)."""
    pairs = [(value(r), weight(r)) for r in runs]
    if any(v is None for v, _ in pairs):
        return None
    total = sum(w for _, w in pairs)
    if not total:
        return None
    return Stat(sum(v * w for v, w in pairs) / total, tuple(v for v, _ in pairs), "pooled")


def _stage_mean(runs: list[Run], name: str) -> Stat | None:
    """Pooled mean microseconds of one stage; None when a server does not have the stage."""
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
    return Stat(sum(sums) / sum(counts), tuple(s / c for s, c in zip(sums, counts)), "pooled")


def _rest_of_handler(runs: list[Run], stage_mean: dict[str, Stat | None]) -> Stat | None:
    """Handler total minus its measured stages (routing, validation glue, awaits, writes)."""
    total = stage_mean.get(HANDLER_TOTAL)
    if total is None:
        return None
    present = [name for name in STAGES if stage_mean.get(name) is not None]
    value = total.value - sum(stage_mean[name].value for name in present)
    per_run = tuple(t - sum(stage_mean[name].values[i] for name in present)
                    for i, t in enumerate(total.values))
    return Stat(value, per_run, "pooled")


def _outside_handler(runs: list[Run], latency_mean: Stat | None,
                     total: Stat | None) -> Stat | None:
    """Client-seen mean latency minus handler time: network, queueing, HTTP framing."""
    if latency_mean is None or total is None:
        return None
    per_run = tuple(c - t for c, t in zip(latency_mean.values, total.values))
    return Stat(latency_mean.value - total.value, per_run, "pooled")


def merged_percentiles(histograms: list[hist.Histogram],
                       percentiles: Iterable[float] = PERCENTILES) -> dict[float, float]:
    """Percentiles of all requests of all the given histograms together (counts added)."""
    return hist.merge(histograms).percentiles(percentiles)


def _latency_percentiles(runs: list[Run], server: str, config: Config,
                         warnings: list[Warning]) -> tuple[dict[float, Stat | None], bool]:
    histograms = [r.histograms.get("client") for r in runs]
    have = [h for h in histograms if h is not None]
    if have and len(have) < len(runs):
        warnings.append(Warning("analysis", f"{server} ({config.label})",
                                f"only {len(have)} of {len(runs)} repeats carry a latency histogram;"
                                f" percentiles fall back to medians over repeats"))
    for run, histogram in zip(runs, histograms):
        # The harness compares the two itself (and warns); repeat the check only for records
        # that carry no harness warning, e.g. from another harness.
        if (histogram is not None and run.requests and not run.warnings
                and abs(histogram.count - run.requests) > HISTOGRAM_COUNT_TOLERANCE * run.requests):
            warnings.append(Warning("analysis", run.label,
                                    f"latency histogram holds {histogram.count} requests but the "
                                    f"run counted {run.requests:.0f}"))

    maxima = [r.latency_us.get("max") for r in runs]
    exact_max = (Stat(max(maxima), tuple(maxima), "max")
                 if all(m is not None for m in maxima) else None)
    out: dict[float, Stat | None] = {}
    if len(have) == len(runs) and all(h.count for h in have):
        merged = merged_percentiles(have)
        per_run = [h.percentiles(PERCENTILES) for h in have]
        for p in PERCENTILES:
            out[p] = Stat(merged[p], tuple(r[p] for r in per_run), "merged")
        if exact_max is not None:
            out[100] = exact_max  # exact even when a histogram rounds values to buckets
        return out, True

    how = "median-of-runs" if len(runs) > 1 else "median"
    for p in PERCENTILES:
        if p == 100:
            out[p] = exact_max
            continue
        key = WRK_KEYS.get(p)
        stat = median_stat(r.latency_us.get(key) for r in runs) if key else None
        out[p] = replace(stat, how=how) if stat else None
    return out, False


def _stage_percentile(runs: list[Run], name: str, percentile: float) -> Stat | None:
    histograms = [r.histograms.get(f"stage:{name}") for r in runs]
    if all(h is not None and h.count for h in histograms):
        merged = merged_percentiles(histograms, (percentile,))
        per_run = tuple(h.percentiles((percentile,))[percentile] for h in histograms)
        return Stat(merged[percentile], per_run, "merged")
    key = STAGE_PERCENTILE_KEYS[percentile]
    values = [(r.stages.get(name) or {}).get(key) for r in runs]
    if any(not (r.stages.get(name) or {}).get("count") for r in runs):
        return None
    stat = median_stat(values)
    if stat is None:
        return None
    return replace(stat, how="median-of-runs" if len(runs) > 1 else "median")


# --------------------------------------------------------------------------------------------
# Comparisons


def choose_winner(entries: list[tuple[str, Stat | None]], higher_is_better: bool) -> Verdict:
    """The best server on one metric, unless the runner-up is within the run-to-run spread."""
    ranked = sorted(((name, stat) for name, stat in entries if stat is not None),
                    key=lambda e: e[1].value, reverse=higher_is_better)
    if not ranked:
        return Verdict("n/a", None, None)
    best_name, best = ranked[0]
    if len(ranked) == 1:
        return Verdict(best_name, best_name, None)
    runner_name, runner = ranked[1]
    if best.value == runner.value:
        tied = [name for name, stat in ranked if stat.value == best.value]
        return Verdict(f"tie ({' = '.join(tied)})", None, False)
    verdict = significant(best, runner)
    if verdict is None:
        return Verdict(f"{best_name} (single run: spread unknown)", best_name, None)
    if not verdict:
        tied = [name for name, stat in ranked if stat.overlaps(best)]
        return Verdict(f"not significant ({' ≈ '.join(tied)})", None, False)
    return Verdict(best_name, best_name, True)


def _overheads(summary: Summary, config: Config) -> list[Overhead]:
    cells = summary.servers_in(config)
    by_name = {c.server: c for c in cells}
    python_floor = next((c for c in cells if c.role == "floor" and c.language == "python"), None)
    native_floor = next((c for c in cells if c.role == "floor" and c.language == "native"), None)
    reference = by_name.get(REFERENCE_SERVER)
    if reference is not None and reference.role != "model":
        reference = None
    pairs: list[tuple[ServerSummary, ServerSummary, str]] = []
    for cell in cells:
        if cell.language != "python":
            continue
        if cell.role == "model":
            if reference is not None:
                pairs.append((cell, reference, "Rust reference"))
            if python_floor is not None:
                pairs.append((cell, python_floor, "own floor"))
        elif cell.role == "floor" and native_floor is not None:
            pairs.append((cell, native_floor, "Rust floor"))
    return [o for o in (_overhead(config, s, r, rel) for s, r, rel in pairs) if o is not None]


def _overhead(config: Config, subject: ServerSummary, reference: ServerSummary,
              relation: str) -> Overhead | None:
    a, b = subject.cpu_us_per_req.get("server"), reference.cpu_us_per_req.get("server")
    if a is None or b is None:
        return None
    delta = a.value - b.value
    stage_delta = None
    unattributed = None
    if subject.has_stages and reference.has_stages:
        stage_delta = {}
        for name in ATTRIBUTED_STAGES:
            sa, sb = _stage_or_rest(subject, name), _stage_or_rest(reference, name)
            stage_delta[name] = (sa.value if sa else 0.0) - (sb.value if sb else 0.0)
        unattributed = delta - sum(stage_delta.values())
    return Overhead(config, subject, reference, relation, delta,
                    a.value / b.value if b.value else None, significant(a, b),
                    stage_delta, unattributed)


def _stage_or_rest(cell: ServerSummary, name: str) -> Stat | None:
    return cell.rest_of_handler_us if name == "rest" else cell.stage_mean_us.get(name)


def _latency_ms(p: float) -> Callable[[Summary, ServerSummary], Stat | None]:
    def get(_summary: Summary, cell: ServerSummary) -> Stat | None:
        stat = cell.latency_us.get(p)
        return stat.scaled(1e-3) if stat else None
    return get


HEADLINE_METRICS = (
    Metric("server CPU (cores used)", lambda s, c: c.cores.get("server"), False),
    Metric("server peak RSS (MB)", lambda s, c: c.rss_mb.get("server"), False),
    Metric("p95 latency (ms)", _latency_ms(95), False),
    Metric("p99 latency (ms)", _latency_ms(99), False),
    Metric("requests/s", lambda s, c: c.rps, True),
    Metric("share of db-ceiling", lambda s, c: s.ceiling_fraction(c), True),
)

COMPARE_METRICS = (
    Metric("requests/s", lambda s, c: c.rps, True),
    Metric("p50 latency (ms)", _latency_ms(50), False),
    Metric("p99 latency (ms)", _latency_ms(99), False),
    Metric("server CPU µs/request", lambda s, c: c.cpu_us_per_req.get("server"), False),
    Metric("db CPU µs/request", lambda s, c: c.cpu_us_per_req.get("db"), False),
    Metric("server CPU (cores used)", lambda s, c: c.cores.get("server"), False),
    Metric("server peak RSS (MB)", lambda s, c: c.rss_mb.get("server"), False),
)


@dataclass
class CompareRow:
    config: Config
    server: str
    metric: Metric
    a: Stat
    b: Stat

    @property
    def ratio(self) -> float | None:
        return self.b.value / self.a.value if self.a.value else None

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        """The ratio's range if any repeat of A could pair with any repeat of B."""
        if self.a.lo <= 0:
            return None
        return self.b.lo / self.a.hi, self.b.hi / self.a.lo

    @property
    def significant(self) -> bool | None:
        return significant(self.a, self.b)


SETTINGS = ("workers", "pool_size", "top_k", "duration_s", "warmup_s")


def settings_of(summary: Summary) -> dict[str, list]:
    """The values each run setting took over the HTTP server runs of a results folder."""
    runs = [r for r in summary.results.runs if not r.is_ceiling]
    return {attr: sorted({getattr(r, attr) for r in runs}, key=lambda v: (v is None, v))
            for attr in SETTINGS}


def compare(a: Summary, b: Summary) -> tuple[list[CompareRow], list[str], list[str]]:
    """Rows for every (configuration, server, metric) both results have, and what only one has."""
    def keyed(summary: Summary) -> dict[tuple[Config, str], ServerSummary]:
        cells = dict(summary.cells)
        cells.update({(cfg, c.server): c for cfg, c in summary.ceilings.items()})
        return cells

    cells_a, cells_b = keyed(a), keyed(b)
    rows: list[CompareRow] = []
    for key in sorted(cells_a.keys() & cells_b.keys()):
        ca, cb = cells_a[key], cells_b[key]
        for metric in COMPARE_METRICS:
            sa, sb = metric.get(a, ca), metric.get(b, cb)
            if sa is not None and sb is not None:
                rows.append(CompareRow(key[0], key[1], metric, sa, sb))

    def describe(keys) -> list[str]:
        return [f"{server} ({cfg.label})" for cfg, server in sorted(keys)]

    only_a, only_b = cells_a.keys() - cells_b.keys(), cells_b.keys() - cells_a.keys()
    return rows, describe(only_a), describe(only_b)


# --------------------------------------------------------------------------------------------
# Warnings


def _run_warnings(runs: list[Run]) -> list[Warning]:
    """The harness's own warnings as written. The analysis repeats the run-level checks (errors,
    non-2xx, saturated load generator) only for records that carry no warning at all, e.g. from
    another harness: where the harness looked, its wording stands and nothing is said twice."""
    out: list[Warning] = []
    for run in sorted(runs, key=lambda r: r.key):
        out.extend(Warning("harness", run.label, text) for text in run.warnings)
        if run.warnings:
            continue
        errors = {k: v for k, v in run.errors.items() if v}
        if errors:
            detail = ", ".join(f"{k} {v:.0f}" for k, v in errors.items())
            out.append(Warning("analysis", run.label,
                               f"{sum(errors.values()):.0f} client errors ({detail})"))
        if run.non2xx:
            out.append(Warning("analysis", run.label,
                               f"{run.non2xx:.0f} responses were not 2xx"))
        load_cpu = _side(run, "load", "cpu_s")
        threads = run.client_threads or 1
        if load_cpu is not None and load_cpu / _wall_s(run) / threads > LOAD_SATURATION_CORES:
            out.append(Warning("analysis", run.label,
                               f"the load generator ({run.tool}) used "
                               f"{load_cpu / _wall_s(run) / threads:.0%} of a core per thread: it "
                               f"may have been the bottleneck"))
        if not run.requests:
            out.append(Warning("analysis", run.label, "no request completed"))
    return out


def _foreign_load_warnings(runs: list[Run]) -> list[Warning]:
    """Processes outside the benchmark that used the machine during the runs (when records carry
    the machine's busy CPU time): those figures are disturbed by an amount nobody can tell.
    One line for the whole folder: the share of runs affected, the typical and the worst load."""
    foreign: list[tuple[float, Run]] = []
    measured = 0
    for run in runs:
        busy = _side(run, "machine", "busy_cpu_s")
        if busy is None:
            continue
        measured += 1
        # db_foreign: other clients' database backends, outside the benchmark like the rest
        ours = sum(figures.get("cpu_s", 0.0) for side, figures in run.resources.items()
                   if figures and side not in ("machine", "db_foreign"))
        cores = (busy - ours) / _wall_s(run)
        if cores > FOREIGN_CPU_WARNING:
            foreign.append((cores, run))
    if not foreign:
        return []
    foreign.sort(key=lambda item: item[0])
    worst_cores, worst = foreign[-1]
    machine = _side(worst, "machine", "cores")
    share = f" ({worst_cores / machine:.0%} of the machine)" if machine else ""
    typical = statistics.median(cores for cores, _ in foreign)
    return [Warning("analysis", "machine",
                    f"processes outside the benchmark used more than {FOREIGN_CPU_WARNING:.2f} "
                    f"cores during {len(foreign)} of {measured} runs (median {typical:.2f} cores, "
                    f"up to {worst_cores:.2f}{share} in {worst.label}): those figures are disturbed "
                    f"by an unknown amount; rerun on a quiet machine before trusting them")]


def _fairness_warnings(runs: list[Run]) -> list[Warning]:
    """Every server of one configuration must have run with the same settings."""
    out: list[Warning] = []
    by_config: dict[Config, list[Run]] = defaultdict(list)
    for run in runs:
        if not run.is_ceiling:
            by_config[run.config].append(run)
    for config, group in sorted(by_config.items()):
        for attr in SETTINGS:
            servers_by_value: dict = defaultdict(set)
            for run in group:
                servers_by_value[getattr(run, attr)].add(run.server)
            if len(servers_by_value) > 1:
                detail = "; ".join(
                    f"{attr}={value}: {', '.join(sorted(servers_by_value[value]))}"
                    for value in sorted(servers_by_value, key=lambda v: (v is None, v)))
                out.append(Warning("analysis", config.label,
                                   f"servers ran with different {attr} ({detail}): "
                                   f"they are not compared on equal terms"))
    return out


def _spread_warnings(cell: ServerSummary) -> list[Warning]:
    checks = [("requests/s", cell.rps), ("p99 latency", cell.latency_us.get(99)),
              ("server CPU µs/request", cell.cpu_us_per_req.get("server"))]
    out = []
    for name, stat in checks:
        if stat is not None and stat.deviation is not None and stat.deviation > SPREAD_WARNING:
            out.append(Warning("analysis", f"{cell.server} ({cell.config.label})",
                               f"{name} varies by ±{stat.deviation:.0%} over {stat.n} repeats "
                               f"(above {SPREAD_WARNING:.0%}): differences between servers smaller "
                               f"than this are not significant"))
    return out
