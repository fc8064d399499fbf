"""Comparisons between servers of one results folder, and between two results folders.

- Facet pairs: every pair of servers of one configuration that differ in exactly one facet
  (`rankbench.servers.isolated_facet`), with the difference in server CPU per request and in goodput.
  A pair that differs in two facets isolates nothing and is never presented as a pair.
- Two-step decompositions: two model servers of different language, A and B, with floors FA and FB
  (the same stacks without a model) split as (A - B) = (FA - FB) + ((A - FA) - (B - FB)): what the
  two stacks cost apart from any model, then what their model paths cost. Only when both floors
  were measured.
- `compare`: B/A per (configuration, server, metric) for two results folders, with each folder's
  machine calibration, since CPU per request is comparable across days only as ratios.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Callable

from rankbench.contract import COMPUTE_STAGES
from rankbench.servers import isolated_facet, pair_sentence

from analysis.load import CEILING, PGBENCH, Config, Results
from analysis.stats import Stat, combine, ratio_stat, significant
from analysis.summaries import ServerSummary, Summary

CALIBRATION_KEYS = (("python_ns_per_iter", "python loop (ns/iter)"),
                    ("native_ns_per_iter", "native loop (ns/iter)"))


# --------------------------------------------------------------------------------------------
# Pairs that isolate one facet


@dataclass
class FacetPair:
    config: Config
    a: ServerSummary
    b: ServerSummary
    facet: str
    sentence: str                  # what the pair isolates (rankbench.servers.pair_sentence)
    cpu_delta_us: Stat | None      # server CPU µs/request, a - b
    goodput_ratio: Stat | None     # goodput a / b

    @property
    def cpu_significant(self) -> bool | None:
        return significant(self.a.cpu_us_per_req.get("server"), self.b.cpu_us_per_req.get("server"))

    @property
    def goodput_significant(self) -> bool | None:
        return significant(self.a.goodput, self.b.goodput)


def comparable(cell: ServerSummary) -> bool:
    """Facets known and at least one valid run."""
    return cell.facts is not None and cell.facts.known and not cell.all_invalid


def facet_pairs(summary: Summary, config: Config) -> list[FacetPair]:
    cells = [c for c in summary.servers_in(config) if comparable(c)]
    out = []
    for a, b in combinations(cells, 2):  # report order: models first, then by language
        facet = isolated_facet(a.facts.facets, b.facts.facets)
        if facet is None:
            continue
        out.append(FacetPair(config, a, b, facet, pair_sentence(a.facts.facets, b.facts.facets),
                             cpu_difference(a, b), ratio_stat(a.goodput, b.goodput)))
    return out


def _server_cpu(cell: ServerSummary) -> Stat | None:
    return cell.cpu_us_per_req.get("server")


def cpu_difference(a: ServerSummary, b: ServerSummary) -> Stat | None:
    """Server CPU µs per request, a - b, with its per-repeat spread; None unless both recorded."""
    sa, sb = _server_cpu(a), _server_cpu(b)
    return combine([(1, sa), (-1, sb)]) if sa is not None and sb is not None else None


# --------------------------------------------------------------------------------------------
# Two-step decomposition of a difference between languages


STEPS = ("total", "floors", "model paths")


@dataclass
class Decomposition:
    """(A - B) = (FA - FB) + ((A - FA) - (B - FB)) in server CPU µs/request."""

    config: Config
    a: ServerSummary
    b: ServerSummary
    floor_a: ServerSummary
    floor_b: ServerSummary
    steps: dict[str, Stat]                         # STEPS
    stage_split: dict[str, dict[str, float | None]]  # step -> COMPUTE_STAGES -> µs (None: n/a)
    elsewhere: dict[str, float | None]             # step -> µs outside the compute stages
    missing: tuple[str, ...]                       # why a stage figure is n/a

    @property
    def significant(self) -> bool | None:
        return significant(_server_cpu(self.a), _server_cpu(self.b))


@dataclass
class Undecomposed:
    """A pair of model servers of different language whose floors were not both measured."""

    config: Config
    a: ServerSummary
    b: ServerSummary
    reason: str


def decompositions(summary: Summary, config: Config) -> list[Decomposition | Undecomposed]:
    cells = [c for c in summary.servers_in(config) if comparable(c)]
    by_name = {c.server: c for c in cells}
    models = [c for c in cells if c.role == "model"]
    out: list[Decomposition | Undecomposed] = []
    for a, b in combinations(models, 2):
        if a.language == b.language:
            continue
        floors, lacking = [], []
        for cell in (a, b):
            floor_name = cell.facts.get("floor")
            floor = by_name.get(floor_name) if floor_name else None
            if not floor_name:
                lacking.append(f"{cell.server} has no registered floor")
            elif floor is None or floor.role != "floor":
                lacking.append(f"{cell.server}'s floor {floor_name} has no valid run here")
            floors.append(floor)
        if lacking or any(_server_cpu(c) is None for c in (a, b, *floors)):
            reason = "; ".join(lacking) or "server CPU was not recorded for all four servers"
            out.append(Undecomposed(config, a, b, reason))
            continue
        out.append(_decompose(config, a, b, *floors))
    return out


def _decompose(config: Config, a: ServerSummary, b: ServerSummary, fa: ServerSummary,
               fb: ServerSummary) -> Decomposition:
    signs = {"total": ((1, a), (-1, b)),
             "floors": ((1, fa), (-1, fb)),
             "model paths": ((1, a), (-1, fa), (-1, b), (1, fb))}
    steps = {step: combine([(sign, _server_cpu(c)) for sign, c in terms])
             for step, terms in signs.items()}
    missing = sorted({f"{c.server} recorded no `{name}` stage" for c in (a, b, fa, fb)
                      for name in COMPUTE_STAGES if c.stage_mean_us.get(name) is None})
    split: dict[str, dict[str, float | None]] = {}
    elsewhere: dict[str, float | None] = {}
    for step, terms in signs.items():
        split[step] = {}
        for name in COMPUTE_STAGES:
            stats = [(sign, c.stage_mean_us.get(name)) for sign, c in terms]
            split[step][name] = (None if any(s is None for _, s in stats)
                                 else sum(sign * s.value for sign, s in stats))
        parts = list(split[step].values())
        elsewhere[step] = (None if any(p is None for p in parts)
                           else steps[step].value - sum(parts))
    return Decomposition(config, a, b, fa, fb, steps, split, elsewhere, tuple(missing))


# --------------------------------------------------------------------------------------------
# Metrics shared by the headline table and `compare`


@dataclass
class Metric:
    name: str
    get: Callable[[Summary, ServerSummary], Stat | None]
    higher_is_better: bool
    has_winner: bool = True
    needs: str | None = None      # a reference the metric needs (CEILING, PGBENCH)
    missing: str = "not in the run records"   # why a cell is n/a
    share: bool = False                       # a fraction, printed as a percentage


def _latency_ms(p: float) -> Callable[[Summary, ServerSummary], Stat | None]:
    def get(_summary: Summary, cell: ServerSummary) -> Stat | None:
        stat = cell.latency_us.get(p)
        return stat.scaled(1e-3) if stat else None
    return get


_NO_CPU = "the run records hold no server CPU time"
_NO_RSS = "the run records hold no server memory figures"
_NO_LATENCY = "the run records hold no latency figures"

HEADLINE_METRICS = (
    Metric("goodput (2xx/s)", lambda s, c: c.goodput, True),
    Metric("all responses/s", lambda s, c: c.rps, True, has_winner=False),
    Metric("server CPU (cores used)", lambda s, c: c.cores.get("server"), False, missing=_NO_CPU),
    Metric("server peak RSS (MB)", lambda s, c: c.rss_mb.get("server"), False, missing=_NO_RSS),
    Metric("p95 latency (ms)", _latency_ms(95), False, missing=_NO_LATENCY),
    Metric("p99 latency (ms)", _latency_ms(99), False, missing=_NO_LATENCY),
    Metric("share of database ceiling", lambda s, c: s.reference_share(c, CEILING), True,
           needs=CEILING, missing="the ceiling's goodput is 0", share=True),
    Metric("share of pgbench reference", lambda s, c: s.reference_share(c, PGBENCH), True,
           has_winner=False, needs=PGBENCH, missing="the reference's goodput is 0", share=True),
)

COMPARE_METRICS = (
    Metric("goodput (2xx/s)", lambda s, c: c.goodput, True),
    Metric("all responses/s", lambda s, c: c.rps, True),
    Metric("p50 latency (ms)", _latency_ms(50), False),
    Metric("p99 latency (ms)", _latency_ms(99), False),
    Metric("server CPU µs/request", lambda s, c: c.cpu_us_per_req.get("server"), False),
    Metric("db CPU µs/request", lambda s, c: c.cpu_us_per_req.get("db"), False),
    Metric("server CPU (cores used)", lambda s, c: c.cores.get("server"), False),
    Metric("server peak RSS (MB)", lambda s, c: c.rss_mb.get("server"), False),
)


# --------------------------------------------------------------------------------------------
# Two results folders


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
    runs = [r for r in summary.results.runs if not r.is_reference]
    return {attr: sorted({getattr(r, attr) for r in runs}, key=lambda v: (v is None, v))
            for attr in SETTINGS}


def compare(a: Summary, b: Summary) -> tuple[list[CompareRow], list[str], list[str]]:
    """Rows for every (configuration, server, metric) both results have, and what only one has."""
    def keyed(summary: Summary) -> dict[tuple[Config, str], ServerSummary]:
        cells = dict(summary.cells)
        cells.update({(cfg, c.server): c for (cfg, _), c in summary.references.items()})
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


def calibration(results: Results) -> dict[str, float | None]:
    """The machine's speed that day (env.json `calibration`), ns per loop iteration."""
    recorded = results.calibration or {}
    out = {}
    for key, _ in CALIBRATION_KEYS:
        value = recorded.get(key)
        out[key] = (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value > 0 else None)
    return out


def calibration_ratios(a: Results, b: Results) -> dict[str, float | None]:
    """B/A of each calibration loop: above 1, B's machine was slower that day."""
    ca, cb = calibration(a), calibration(b)
    return {key: cb[key] / ca[key] if ca[key] and cb[key] else None for key, _ in CALIBRATION_KEYS}


__all__ = ["CALIBRATION_KEYS", "COMPARE_METRICS", "HEADLINE_METRICS", "STEPS", "CompareRow",
           "Decomposition", "FacetPair", "Metric", "Undecomposed", "calibration",
           "calibration_ratios", "compare", "decompositions", "facet_pairs", "settings_of"]
