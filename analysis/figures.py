"""Figures of the report (PNG, ~100 dpi, a few hundred KB at most), one function per figure.

matplotlib's object API (`Figure`, no pyplot): no GUI backend, no global state between figures.
Every server keeps one colour across all figures of a report; floors are dashed or hatched.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rankbench.contract import COMPUTE_STAGES

from analysis.ladder import ladder
from analysis.load import CEILING, PGBENCH, RESOURCE_SIDES, Config
from analysis.summaries import REFERENCE_LABELS, ServerSummary, Summary

DPI = 100
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]
STAGE_COLOURS = {"parse": "#4e79a7", "pre": "#f28e2b", "infer": "#e15759", "post": "#76b7b2",
                 "compute": "#9c755f", "db": "#59a14f", "rest": "#b07aa1", "outside": "#bab0ac"}
SIDE_COLOURS = {"server": "#4e79a7", "db": "#59a14f", "load": "#bab0ac"}
SIDE_LABELS = {"server": "server", "db": "database (postgres)", "load": "load generator"}
MAX_PANELS = 4


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _three_digits(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def colours(summary: Summary) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(summary.server_names())}


def write_all(summary: Summary, configs: list[Config], folder: Path) -> dict[str, Path]:
    """Write every figure the results support; return {figure key: path}."""
    written: dict[str, Path] = {}
    for config in configs:
        cells = summary.servers_in(config)
        if any(c.has_stages for c in cells):
            written[f"stages:{config.slug}"] = _save(stage_figure(config, cells),
                                                     folder / f"stages_{config.slug}.png")
        rows = cells + summary.references_for(config)
        if any(c.cpu_us_per_req.get(side) for c in rows for side in RESOURCE_SIDES):
            written[f"cpu:{config.slug}"] = _save(cpu_figure(config, rows),
                                                  folder / f"cpu_{config.slug}.png")
    for config in configs:
        built = ladder(summary, config)
        if built is not None:
            written[f"ladder:{config.slug}"] = _save(waterfall_figure(built),
                                                     folder / f"ladder_{config.slug}.png")
    palette = colours(summary)
    scenarios = sorted({c.scenario for c in summary.configs})
    for scenario in scenarios:
        suffix = "" if len(scenarios) == 1 else f"_{scenario}"
        configs_s = [c for c in summary.configs if c.scenario == scenario]
        concurrencies = sorted({c.concurrency for c in configs_s})
        items = sorted({c.candidates for c in configs_s})
        if len(concurrencies) > 1:
            written["throughput_vs_concurrency" + suffix] = _save(
                throughput_figure(summary, scenario, palette),
                folder / f"throughput_vs_concurrency{suffix}.png")
            written["p99_vs_throughput" + suffix] = _save(
                p99_figure(summary, scenario, palette), folder / f"p99_vs_throughput{suffix}.png")
        if len(items) > 1:
            written["cpu_vs_items" + suffix] = _save(
                cpu_items_figure(summary, scenario, palette), folder / f"cpu_vs_items{suffix}.png")
    return written


# --------------------------------------------------------------------------------------------
# Per-configuration bars


def _stacked(ax, names: list[str], segments: dict[str, list[float | None]],
             colours: dict[str, str], labels: dict[str, str],
             not_applicable: list[set[str]] | None = None) -> list[float]:
    """Horizontal stacked bars, first name at the bottom. A segment that was not measured (None)
    is left out, never drawn as 0, and its bar is annotated "n/a: <segment>" instead of a total;
    a segment in `not_applicable[i]` is left out of bar i without a remark. Returns where each bar
    ends."""
    y = list(range(len(names)))
    ends = [0.0] * len(names)
    missing: list[list[str]] = [[] for _ in names]
    for key, widths in segments.items():
        drawn = [(i, w) for i, w in enumerate(widths) if w is not None]
        for i, w in enumerate(widths):
            if w is None and not (not_applicable and key in not_applicable[i]):
                missing[i].append(labels[key])
        if drawn:
            ax.barh([y[i] for i, _ in drawn], [w for _, w in drawn],
                    left=[ends[i] for i, _ in drawn], color=colours[key], label=labels[key],
                    height=0.6)
            for i, w in drawn:
                ends[i] += w
    ax.set_yticks(y, names)
    for i, end in enumerate(ends):
        text = (f" {_three_digits(end)}" if not missing[i]
                else f" n/a: {', '.join(missing[i])} not recorded")
        ax.text(end, i, text, va="center", fontsize=8)
    return ends


def _width_limit(ax, ends: list[float], room: float) -> None:
    top = max(ends) if ends else 0.0
    ax.set_xlim(0, top * room if top > 0 else 1)


def stage_figure(config: Config, cells: list[ServerSummary]) -> Figure:
    """Left: the compute stages, whose wall time is CPU time (where runtimes differ), in µs.
    Right: the whole latency the client saw, in ms: compute stages, db (PostgreSQL and the wait for
    a pooled connection), the rest of the handler (glue, event-loop waits) and outside the handler."""
    cells = [c for c in cells if c.has_stages][::-1]  # first server on top
    names = [c.display_name for c in cells]
    fig = _figure(9.0, 1.7 + 0.45 * len(cells))
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[1.2, 1])

    def mean(cell: ServerSummary, stage: str, scale: float = 1.0) -> float | None:
        stat = cell.stage_mean_us.get(stage)
        return stat.value / scale if stat is not None else None

    ends = _stacked(left, names, {s: [mean(c, s) for c in cells] for s in COMPUTE_STAGES},
                    STAGE_COLOURS, {s: s for s in COMPUTE_STAGES})
    _width_limit(left, ends, 1.15)
    left.set_xlabel("µs per request (mean)")
    left.set_title("compute stages", fontsize=10)

    def compute_ms(cell: ServerSummary) -> float | None:
        parts = [mean(cell, s, 1e3) for s in COMPUTE_STAGES]
        return None if any(p is None for p in parts) else sum(parts)

    def clipped_ms(stat) -> float | None:
        # a negative remainder (timer overlap, rounding) is not drawable; the table shows it
        return max(stat.value, 0) / 1e3 if stat is not None else None

    segments = {
        "compute": [compute_ms(c) for c in cells],
        "db": [mean(c, "db", 1e3) for c in cells],
        "rest": [clipped_ms(c.rest_of_handler_us) for c in cells],
        "outside": [clipped_ms(c.outside_handler_us) for c in cells],
    }
    labels = {"compute": "compute stages", "db": "db (incl. pool wait)",
              "rest": "rest of handler", "outside": "outside handler"}
    ends = _stacked(right, names, segments, STAGE_COLOURS, labels)
    _width_limit(right, ends, 1.18)
    right.set_xlabel("ms per request (mean client latency)")
    right.set_title("client-seen latency", fontsize=10)
    _legend(fig, [left, right], ncol=4)
    fig.suptitle(f"Stage breakdown — {config.label}", fontsize=11)
    return fig


def cpu_figure(config: Config, cells: list[ServerSummary]) -> Figure:
    """CPU µs per request by process group; a reference run has no server (nothing drawn, and
    nothing missing), a group another run did not record is annotated n/a."""
    rows = cells[::-1]
    names = [c.display_name for c in rows]
    fig = _figure(8.0, 1.4 + 0.42 * len(rows))
    ax = fig.subplots()
    segments: dict[str, list[float | None]] = {}
    for side in RESOURCE_SIDES:
        segments[side] = [c.cpu_us_per_req[side].value if c.cpu_us_per_req.get(side) else None
                          for c in rows]
    ends = _stacked(ax, names, segments, SIDE_COLOURS, SIDE_LABELS,
                    [{"server"} if c.is_reference else set() for c in rows])
    _width_limit(ax, ends, 1.12)
    ax.set_xlabel("CPU µs per request")
    ax.set_title(f"CPU cost per request — {config.label}", fontsize=11)
    _legend(fig, [ax], ncol=3)
    return fig


def waterfall_figure(ladder) -> Figure:
    """Server CPU per request down the ladder (analysis.ladder.Ladder): one bar per rung, each
    step's change between the bars it joins; the servers beside the first rung drawn apart."""
    beside = [cell for cell, _ in ladder.beside]
    cells = beside + ladder.rungs
    values = [c.cpu_us_per_req["server"].value if c.cpu_us_per_req.get("server") else None
              for c in cells]
    fig = _figure(1.6 + 1.05 * len(cells), 4.2)
    ax = fig.subplots()
    xs = list(range(len(cells)))
    for x, cell, value in zip(xs, cells, values):
        if value is None:
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
            continue
        ax.bar(x, value, width=0.62, color="#bab0ac" if cell in beside else "#4e79a7",
               hatch="//" if cell in beside else None, edgecolor="white")
        ax.text(x, value, _three_digits(value), ha="center", va="bottom", fontsize=8)
    top = max((v for v in values if v is not None), default=1.0)
    offset = len(beside)
    for i, step in enumerate(ladder.steps):
        if step.cpu_us is None:
            continue
        x = offset + i + 0.5
        ax.annotate(f"{step.cpu_us.value:+,.0f}", (x, top * 1.1), ha="center", fontsize=8,
                    color="#d62728" if step.cpu_us.value > 0 else "#2ca02c")
    ax.set_xticks(xs, [c.server for c in cells], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, top * 1.22)
    ax.set_ylabel("server CPU µs per request")
    ax.set_title(f"From the published stack to Candle — {ladder.config.label}\n"
                 "(numbers between bars: the step's change in µs; hatched: beside the ladder)",
                 fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Sweeps


def _panel_grid(count: int) -> tuple[int, int, float, float]:
    if count == 1:
        return 1, 1, 8.0, 4.5
    if count == 2:
        return 1, 2, 9.5, 4.3
    return 2, 2, 9.5, 7.0


def _pick(values: list[int]) -> list[int]:
    """At most MAX_PANELS values, evenly spread and always keeping the first and the last."""
    if len(values) <= MAX_PANELS:
        return values
    step = (len(values) - 1) / (MAX_PANELS - 1)
    return [values[round(i * step)] for i in range(MAX_PANELS)]


def _series(summary: Summary, scenario: str) -> dict[str, list[ServerSummary]]:
    series: dict[str, list[ServerSummary]] = {}
    for name in summary.server_names():
        # a cell of invalid runs only is not a point: its figures are struck in the tables
        series[name] = sorted((c for (cfg, s), c in summary.cells.items()
                               if s == name and cfg.scenario == scenario and not c.all_invalid),
                              key=lambda c: (c.config.candidates, c.config.concurrency))
    return series


def _style(cell: ServerSummary) -> dict:
    return {"linestyle": "--" if cell.role == "floor" else "-", "marker": "o", "markersize": 4,
            "linewidth": 1.6}


def _panels(fig: Figure, count: int, **kwargs):
    rows, cols, _, _ = _panel_grid(count)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return axes[:count]


def _legend(fig: Figure, axes, ncol: int = 6) -> None:
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), ncol), fontsize=8,
               frameon=False)


def _items_label(n: int) -> str:
    return f"{n} item{'s' if n != 1 else ''}/request"


def _log2_ticks(ax, values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def throughput_figure(summary: Summary, scenario: str, colours: dict[str, str]) -> Figure:
    items_values = _pick(sorted({c.candidates for c in summary.configs if c.scenario == scenario}))
    concurrencies = sorted({c.concurrency for c in summary.configs if c.scenario == scenario})
    _, _, width, height = _panel_grid(len(items_values))
    fig = _figure(width, height)
    axes = _panels(fig, len(items_values))
    series = _series(summary, scenario)
    for ax, items in zip(axes, items_values):
        for name, cells in series.items():
            points = [c for c in cells if c.config.candidates == items]
            if not points:
                continue
            x = [c.config.concurrency for c in points]
            y = [c.goodput.value for c in points]
            err = [[c.goodput.value - c.goodput.lo for c in points],
                   [c.goodput.hi - c.goodput.value for c in points]]
            ax.errorbar(x, y, yerr=err if any(c.goodput.n > 1 for c in points) else None,
                        color=colours[name], label=points[0].display_name, capsize=2,
                        **_style(points[0]))
        for kind, style in ((CEILING, ":"), (PGBENCH, "-.")):
            line = sorted((cfg.concurrency, c.goodput.value) for (cfg, k), c in
                          summary.references.items() if k == kind and cfg.scenario == scenario
                          and cfg.candidates == items and not c.all_invalid)
            if line:
                ax.plot(*zip(*line), color="#555555", linestyle=style, linewidth=1.4,
                        label=REFERENCE_LABELS[kind].split(" (")[0])
        _log2_ticks(ax, concurrencies)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(_items_label(items), fontsize=10)
        ax.set_xlabel("concurrency (connections, log scale)")
        ax.set_ylabel("goodput (2xx responses/s)")
        ax.grid(True, alpha=0.3)
    _legend(fig, axes)
    fig.suptitle("Goodput vs concurrency", fontsize=11)
    return fig


def p99_figure(summary: Summary, scenario: str, colours: dict[str, str]) -> Figure:
    items_values = _pick(sorted({c.candidates for c in summary.configs if c.scenario == scenario}))
    _, _, width, height = _panel_grid(len(items_values))
    fig = _figure(width, height)
    axes = _panels(fig, len(items_values))
    series = _series(summary, scenario)
    for ax, items in zip(axes, items_values):
        for name, cells in series.items():
            points = [c for c in cells
                      if c.config.candidates == items and c.latency_us.get(99) is not None]
            if not points:
                continue
            x = [c.goodput.value for c in points]
            y = [c.latency_us[99].value / 1e3 for c in points]
            ax.plot(x, y, color=colours[name], label=points[0].display_name, **_style(points[0]))
            # label the concurrency of each point once, on the fastest model server's line
        labelled = _fastest(series, items)
        if labelled:
            for c in labelled:
                ax.annotate(f"c={c.config.concurrency}", (c.goodput.value, c.latency_us[99].value / 1e3),
                            textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color="#333333")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlim(left=0)
        ax.set_title(_items_label(items), fontsize=10)
        ax.set_xlabel("goodput (2xx responses/s)")
        ax.set_ylabel("p99 latency (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    fig.suptitle("p99 latency vs goodput (one point per concurrency)", fontsize=11)
    return fig


def _fastest(series: dict[str, list[ServerSummary]], items: int) -> list[ServerSummary]:
    best: list[ServerSummary] = []
    for cells in series.values():
        points = [c for c in cells if c.config.candidates == items and c.role == "model"
                  and c.latency_us.get(99) is not None]
        if points and (not best or max(p.goodput.value for p in points) >
                       max(p.goodput.value for p in best)):
            best = points
    return best


def cpu_items_figure(summary: Summary, scenario: str, colours: dict[str, str]) -> Figure:
    concurrencies = _pick(sorted({c.concurrency for c in summary.configs if c.scenario == scenario}))
    items_values = sorted({c.candidates for c in summary.configs if c.scenario == scenario})
    _, _, width, height = _panel_grid(len(concurrencies))
    fig = _figure(width, height)
    axes = _panels(fig, len(concurrencies), sharey=True)
    series = _series(summary, scenario)
    for ax, concurrency in zip(axes, concurrencies):
        for name, cells in series.items():
            points = [c for c in cells if c.config.concurrency == concurrency
                      and c.cpu_us_per_req.get("server") is not None]
            if not points:
                continue
            ax.plot([c.config.candidates for c in points],
                    [c.cpu_us_per_req["server"].value for c in points],
                    color=colours[name], label=points[0].display_name, **_style(points[0]))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(items_values, [str(v) for v in items_values])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"concurrency {concurrency}", fontsize=10)
        ax.set_xlabel("items per request (log scale)")
        ax.set_ylabel("server CPU µs per request (log)")
        ax.grid(True, which="major", alpha=0.3)
    _legend(fig, axes)
    fig.suptitle("Server CPU per request vs items per request", fontsize=11)
    return fig


__all__ = ["write_all", "colours", "stage_figure", "cpu_figure", "throughput_figure", "p99_figure",
           "cpu_items_figure"]
