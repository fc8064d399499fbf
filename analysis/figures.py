"""Figures of the report (PNG, ~100 dpi, a few hundred KB at most), one function per figure.

matplotlib's object API (`Figure`, no pyplot): no GUI backend, no global state between figures.
Every server keeps one colour across all figures of a report; floors are dashed or hatched.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.aggregate import ServerSummary, Summary
from analysis.load import RESOURCE_SIDES, Config

DPI = 100
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]
COMPUTE_STAGES = ("parse", "pre", "infer", "post")
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
        ceiling = summary.ceiling_for(config)
        rows = cells + ([ceiling] if ceiling else [])
        if any(c.cpu_us_per_req.get(side) for c in rows for side in RESOURCE_SIDES):
            written[f"cpu:{config.slug}"] = _save(cpu_figure(config, rows),
                                                  folder / f"cpu_{config.slug}.png")
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


def _value(stat) -> float:
    return stat.value if stat is not None else 0.0


def stage_figure(config: Config, cells: list[ServerSummary]) -> Figure:
    """Left: the compute stages, whose wall time is CPU time (where runtimes differ), in µs.
    Right: the whole latency the client saw, in ms: compute stages, db (PostgreSQL and the wait for
    a pooled connection), the rest of the handler (glue, event-loop waits) and outside the handler."""
    cells = [c for c in cells if c.has_stages][::-1]  # first server on top
    names = [c.display_name for c in cells]
    fig = _figure(9.0, 1.7 + 0.45 * len(cells))
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[1.2, 1])

    starts = [0.0] * len(cells)
    for stage in COMPUTE_STAGES:
        widths = [_value(c.stage_mean_us.get(stage)) for c in cells]
        left.barh(names, widths, left=starts, color=STAGE_COLOURS[stage], label=stage, height=0.6)
        starts = [s + w for s, w in zip(starts, widths)]
    for y, total in enumerate(starts):
        left.text(total, y, f" {_three_digits(total)}", va="center", fontsize=8)
    left.set_xlim(0, max(starts) * 1.15 if max(starts) > 0 else 1)
    left.set_xlabel("µs per request (mean)")
    left.set_title("compute stages", fontsize=10)

    segments = {
        "compute": [sum(_value(c.stage_mean_us.get(s)) for s in COMPUTE_STAGES) / 1e3
                    for c in cells],
        "db": [_value(c.stage_mean_us.get("db")) / 1e3 for c in cells],
        # a negative remainder (timer overlap, rounding) is not drawable; the table shows it
        "rest": [max(_value(c.rest_of_handler_us), 0) / 1e3 for c in cells],
        "outside": [max(_value(c.outside_handler_us), 0) / 1e3 for c in cells],
    }
    labels = {"compute": "compute stages", "db": "db (incl. pool wait)",
              "rest": "rest of handler", "outside": "outside handler"}
    starts = [0.0] * len(cells)
    for key, widths in segments.items():
        right.barh(names, widths, left=starts, color=STAGE_COLOURS[key], label=labels[key],
                   height=0.6)
        starts = [s + w for s, w in zip(starts, widths)]
    for y, c in enumerate(cells):
        if c.latency_mean_us is not None:
            right.text(starts[y], y, f" {_three_digits(c.latency_mean_us.value / 1e3)}",
                       va="center", fontsize=8)
    right.set_xlim(0, max(starts) * 1.18 if max(starts) > 0 else 1)
    right.set_xlabel("ms per request (mean client latency)")
    right.set_title("client-seen latency", fontsize=10)
    _legend(fig, [left, right], ncol=4)
    fig.suptitle(f"Stage breakdown — {config.label}", fontsize=11)
    return fig


def cpu_figure(config: Config, cells: list[ServerSummary]) -> Figure:
    rows = cells[::-1]
    names = [c.display_name if c.role != "ceiling" else f"{c.server} ({c.runs[0].tool})"
             for c in rows]
    fig = _figure(8.0, 1.4 + 0.42 * len(rows))
    ax = fig.subplots()
    starts = [0.0] * len(rows)
    for side in RESOURCE_SIDES:
        widths = [_value(c.cpu_us_per_req.get(side)) for c in rows]
        ax.barh(names, widths, left=starts, color=SIDE_COLOURS[side], label=SIDE_LABELS[side],
                height=0.6)
        starts = [s + w for s, w in zip(starts, widths)]
    for y, total in enumerate(starts):
        ax.text(total, y, f" {_three_digits(total)}", va="center", fontsize=8)
    ax.set_xlim(0, max(starts) * 1.12 if max(starts) > 0 else 1)
    ax.set_xlabel("CPU µs per request")
    ax.set_title(f"CPU cost per request — {config.label}", fontsize=11)
    _legend(fig, [ax], ncol=3)
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
        series[name] = sorted((c for (cfg, s), c in summary.cells.items()
                               if s == name and cfg.scenario == scenario),
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
            y = [c.rps.value for c in points]
            err = [[c.rps.value - c.rps.lo for c in points], [c.rps.hi - c.rps.value for c in points]]
            ax.errorbar(x, y, yerr=err if any(c.rps.n > 1 for c in points) else None,
                        color=colours[name], label=points[0].display_name, capsize=2,
                        **_style(points[0]))
        ceilings = sorted(((cfg.concurrency, c.rps.value) for cfg, c in summary.ceilings.items()
                           if cfg.scenario == scenario and cfg.candidates == items))
        if ceilings:
            ax.plot(*zip(*ceilings), color="#555555", linestyle=":", linewidth=1.4,
                    label="db-ceiling (pgbench)")
        _log2_ticks(ax, concurrencies)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(_items_label(items), fontsize=10)
        ax.set_xlabel("concurrency (connections, log scale)")
        ax.set_ylabel("requests/s")
        ax.grid(True, alpha=0.3)
    _legend(fig, axes)
    fig.suptitle("Throughput vs concurrency", fontsize=11)
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
            x = [c.rps.value for c in points]
            y = [c.latency_us[99].value / 1e3 for c in points]
            ax.plot(x, y, color=colours[name], label=points[0].display_name, **_style(points[0]))
            # label the concurrency of each point once, on the fastest model server's line
        labelled = _fastest(series, items)
        if labelled:
            for c in labelled:
                ax.annotate(f"c={c.config.concurrency}", (c.rps.value, c.latency_us[99].value / 1e3),
                            textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color="#333333")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlim(left=0)
        ax.set_title(_items_label(items), fontsize=10)
        ax.set_xlabel("requests/s")
        ax.set_ylabel("p99 latency (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    fig.suptitle("p99 latency vs throughput (one point per concurrency)", fontsize=11)
    return fig


def _fastest(series: dict[str, list[ServerSummary]], items: int) -> list[ServerSummary]:
    best: list[ServerSummary] = []
    for cells in series.values():
        points = [c for c in cells if c.config.candidates == items and c.role == "model"
                  and c.latency_us.get(99) is not None]
        if points and (not best or max(p.rps.value for p in points) >
                       max(p.rps.value for p in best)):
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
