"""Markdown for the report and for `compare`, from an aggregated Summary (no computation here
beyond presentation: units, rounding, markers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from analysis import figures
from analysis.aggregate import (ATTRIBUTED_STAGES, HEADLINE_METRICS, PERCENTILES, CompareRow,
                                Overhead, ServerSummary, Stat, Summary, choose_winner,
                                settings_of)
from analysis.load import HANDLER_TOTAL, RESOURCE_SIDES, STAGES, Config

REPORT_FILE = "report.md"
MAX_DETAIL_CONFIGS = 4
MEDIAN_MARK = "*"
NOT_RECORDED = "n/a"
ABSENT = "—"

STAGE_LABELS = {"parse": "parse", "db": "db", "pre": "pre", "infer": "infer", "post": "post",
                "rest": "rest of handler"}
ENV_SKIP = ("schema", "servers")  # servers get a table of their own
SIDE_LABELS = {"server": "server", "db": "database", "load": "load generator"}


# --------------------------------------------------------------------------------------------
# Numbers


def num(value: float | None) -> str:
    """About three significant digits, never scientific notation; thousands grouped."""
    if value is None:
        return NOT_RECORDED
    magnitude = abs(value)
    if magnitude < 0.0005:
        return "0"  # never "-0.000"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def signed(value: float | None) -> str:
    if value is None:
        return NOT_RECORDED
    text = num(value)
    return text if text.startswith("-") else f"+{text}"


def percent(value: float | None) -> str:
    if value is None:
        return NOT_RECORDED
    return f"{value:.0%}" if abs(value) >= 0.095 else f"{value:.1%}"


def spread(stat: Stat | None) -> str:
    """'±4%': the largest distance of a repeat from the printed value; empty for one run."""
    if stat is None or stat.deviation is None:
        return ""
    return f" ±{stat.deviation:.0%}" if stat.deviation >= 0.005 else " ±0%"


def with_spread(stat: Stat | None, render=num) -> str:
    return NOT_RECORDED if stat is None else render(stat.value) + spread(stat)


def table(header: list[str], rows: Iterable[list[str]], align: str | None = None) -> str:
    """A Markdown table; `align` is one letter per column, 'l' or 'r' (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Report


def detail_configs(summary: Summary, all_configs: bool) -> list[Config]:
    """Configurations that get full tables: all of them unless a sweep makes that unreadable,
    in which case the highest concurrency of each scenario (the figures show the rest)."""
    if all_configs or len(summary.configs) <= MAX_DETAIL_CONFIGS:
        return list(summary.configs)
    highest = {}
    for config in summary.configs:
        highest[config.scenario] = max(highest.get(config.scenario, 0), config.concurrency)
    return [c for c in summary.configs if c.concurrency == highest[c.scenario]]


def write_report(summary: Summary, *, all_configs: bool = False) -> Path:
    folder = summary.results.path
    configs = detail_configs(summary, all_configs)
    written = figures.write_all(summary, configs, folder)
    text = render_report(summary, configs, written)
    path = folder / REPORT_FILE
    path.write_text(text, encoding="utf-8")
    return path


def render_report(summary: Summary, configs: list[Config],
                  figure_files: dict[str, Path]) -> str:
    def image(key: str, alt: str) -> list[str]:
        if key not in figure_files:
            return []
        return [f"![{alt}]({figure_files[key].name})", ""]

    out: list[str] = []
    out += _title(summary, configs)
    out += ["## Headline", ""]
    for config in configs:
        out += [f"### {config.label}", "", headline_table(summary, config), ""]
        out += _ceiling_line(summary, config)
    out += ["## Latency percentiles (ms, as seen by the load generator)", ""]
    for config in configs:
        out += [f"### {config.label}", "", latency_table(summary, config), ""]
    out += _latency_notes(summary, configs)
    out += ["## Where the time goes: stage breakdown (mean µs per request)", "",
            "Stages are the servers' own wall-clock timers (contract, \"Stages\"); `db` includes "
            "waiting for a pooled connection. *Rest of handler* is the handler total minus its "
            "stages: glue code and, in an asyncio server, waiting for the event loop to run the "
            "handler. *Outside handler* is the mean latency the client saw minus the handler total: "
            "network, queueing before the handler, HTTP framing.", ""]
    for config in configs:
        out += [f"### {config.label}", "", stage_table(summary, config), ""]
        out += image(f"stages:{config.slug}", f"stage breakdown, {config.label}")
        p99 = stage_p99_table(summary, config)
        if p99:
            out += ["p99 of each stage (µs):", "", p99, ""]
    out += ["## CPU cost per request (µs of CPU per request)", "",
            "CPU seconds of each process group during the measured window divided by the "
            "requests served: the machine-independent view of what each stack costs.", ""]
    for config in configs:
        out += [f"### {config.label}", "", cpu_table(summary, config), ""]
        out += image(f"cpu:{config.slug}", f"CPU per request, {config.label}")
    out += _python_overhead(summary, configs)
    sweep = [("throughput_vs_concurrency", "throughput vs concurrency"),
             ("p99_vs_throughput", "p99 latency vs throughput"),
             ("cpu_vs_items", "CPU per request vs items per request")]
    sweep_keys = [(key, f"{alt}{' (' + key[len(prefix) + 1:] + ')' if key != prefix else ''}")
                  for prefix, alt in sweep for key in sorted(figure_files)
                  if key == prefix or key.startswith(prefix + "_")]
    if sweep_keys:
        out += ["## Sweep", ""]
        for key, alt in sweep_keys:
            out += image(key, alt)
    out += _environment(summary)
    out += _variation(summary, configs)
    out += _warnings(summary)
    return "\n".join(out).rstrip() + "\n"


def _title(summary: Summary, configs: list[Config]) -> list[str]:
    runs = summary.results.runs
    stamps = sorted(r.started_at for r in runs if r.started_at)
    when = f"{stamps[0]} to {stamps[-1]}" if stamps else "start times not recorded"
    repeats = summary.repeats
    repeat_text = (f"{repeats[0]} repeat{'s' if repeats[0] != 1 else ''}" if len(repeats) == 1
                   else f"{repeats[0]}-{repeats[-1]} repeats")
    merged = all(c.latency_merged for c in summary.cells.values())
    lines = [
        f"# rankbench report: {summary.results.name}", "",
        f"{len(runs)} measured runs ({when}), {len(summary.configs)} configuration"
        f"{'s' if len(summary.configs) != 1 else ''}, {repeat_text} per server.", "",
        "How to read it:",
        "- Requests/s, cores used and peak RSS are medians over repeats; **±** is the largest "
        "distance of any repeat from the printed value.",
        "- Per-request means (stages, CPU per request) pool every request of every repeat, so the "
        "parts add up to the whole.",
        "- Latency percentiles are " + (
            "those of all requests of all repeats: the repeats' latency histograms are merged "
            "(counts added)." if merged else
            "those of all requests of all repeats (merged histograms) where every repeat "
            "recorded a histogram; otherwise "
            f"they are medians over repeats of each run's percentile (marked {MEDIAN_MARK}), "
            "which is not the percentile of all requests."),
        "- A winner is named only when its range over repeats does not overlap the runner-up's; "
        "otherwise the row says *not significant*. Floors (no model) and the database ceiling "
        "are references, not contestants.", ""]
    if summary.warnings:
        count = len(summary.warnings)
        lines += [f"**{count} warning{'s' if count != 1 else ''}** (listed at the end) qualify "
                  f"these figures.", ""]
    if len(configs) < len(summary.configs):
        lines += [f"Tables show {len(configs)} of the {len(summary.configs)} configurations (the "
                  f"highest concurrency); the sweep figures show all of them, and "
                  f"`python -m analysis report {summary.results.path} --all` tabulates every one.",
                  ""]
    return lines


def headline_table(summary: Summary, config: Config) -> str:
    cells = summary.servers_in(config)
    contestants = [c for c in cells if c.role == "model"]
    header = [""] + [c.display_name for c in cells] + ["winner"]
    rows = []
    for metric in HEADLINE_METRICS:
        render = percent if metric.name == "share of db-ceiling" else num
        stats = {c.server: metric.get(summary, c) for c in cells}
        verdict = choose_winner([(c.server, stats[c.server]) for c in contestants],
                                metric.higher_is_better)
        rows.append([metric.name] + [with_spread(stats[c.server], render) for c in cells]
                    + [verdict.text])
    return table(header, rows, align="l" + "r" * len(cells) + "l")


def _ceiling_line(summary: Summary, config: Config) -> list[str]:
    ceiling = summary.ceiling_for(config)
    if ceiling is None:
        return ["No database ceiling was recorded for this configuration.", ""]
    clients = ceiling.runs[0].record["client"].get("clients")
    how = (f"{clients} clients" if isinstance(clients, int) and clients != config.concurrency
           else f"concurrency {config.concurrency}")
    return [f"db-ceiling: {with_spread(ceiling.rps)} transactions/s ({ceiling.runs[0].tool}, the "
            f"same two queries, {how}, no HTTP server): what PostgreSQL alone sustains here.", ""]


def latency_table(summary: Summary, config: Config) -> str:
    header = ["server"] + [f"{p:g}%" for p in PERCENTILES] + ["from"]
    rows = []
    for cell in summary.servers_in(config):
        values = []
        for p in PERCENTILES:
            stat = cell.latency_us.get(p)
            if stat is None:
                values.append(NOT_RECORDED)
                continue
            mark = MEDIAN_MARK if stat.how == "median-of-runs" else ""
            values.append(num(stat.value / 1000) + mark)
        n = len(cell.runs)
        source = (f"merged histograms, {n} run{'s' if n != 1 else ''}" if cell.latency_merged
                  else ("1 run" if n == 1 else f"median of {n} runs{MEDIAN_MARK}"))
        rows.append([cell.display_name] + values + [source])
    return table(header, rows, align="l" + "r" * len(PERCENTILES) + "l")


def _latency_notes(summary: Summary, configs: list[Config]) -> list[str]:
    cells = [c for cfg in configs for c in summary.servers_in(cfg)]
    notes = []
    if any(not c.latency_merged and len(c.runs) > 1 for c in cells):
        notes.append(f"{MEDIAN_MARK} Median over repeats of each run's own percentile: the runs "
                     "recorded no latency histogram, so the percentile of all requests together "
                     "cannot be computed (and averaging percentiles would be wrong).")
    if any(not c.latency_merged for c in cells):
        notes.append(f"{NOT_RECORDED}: wrk reports 50/75/90/95/99/99.9/99.99%; 66, 80 and 98% "
                     "need a histogram and are not interpolated.")
    notes.append("100% is the largest latency of any run (exact).")
    return [" ".join(notes), ""]


def _stage(cell: ServerSummary, name: str) -> Stat | None:
    return cell.rest_of_handler_us if name == "rest" else cell.stage_mean_us.get(name)


def stage_table(summary: Summary, config: Config) -> str:
    header = ["server", *STAGES, "rest of handler", "handler total", "outside handler",
              "client mean"]
    rows = []
    for cell in summary.servers_in(config):
        if not cell.has_stages:
            rows.append([cell.display_name, "no stage figures recorded"]
                        + [""] * (len(header) - 2))
            continue
        values = [num(s.value) if (s := _stage(cell, n)) else ABSENT for n in (*STAGES, "rest")]
        values += [num(cell.stage_mean_us[HANDLER_TOTAL].value),
                   num(cell.outside_handler_us.value) if cell.outside_handler_us else NOT_RECORDED,
                   num(cell.latency_mean_us.value) if cell.latency_mean_us else NOT_RECORDED]
        rows.append([cell.display_name] + values)
    return table(header, rows)


def stage_p99_table(summary: Summary, config: Config) -> str:
    cells = [c for c in summary.servers_in(config) if c.has_stages]
    if not cells:
        return ""
    header = ["server", *STAGES, "handler total", "from"]
    rows = []
    for cell in cells:
        stats = [cell.stage_p99_us.get(n) for n in (*STAGES, HANDLER_TOTAL)]
        values = [ABSENT if s is None else num(s.value) + (MEDIAN_MARK if s.how == "median-of-runs"
                                                             else "") for s in stats]
        hows = {s.how for s in stats if s is not None}
        n = len(cell.runs)
        source = (f"merged histograms, {n} runs" if hows == {"merged"} else
                  "1 run" if n == 1 else f"median of {n} runs{MEDIAN_MARK}")
        rows.append([cell.display_name] + values + [source])
    return table(header, rows, align="l" + "r" * (len(header) - 2) + "l")


def cpu_table(summary: Summary, config: Config) -> str:
    header = ["server", *(f"{SIDE_LABELS[s]} µs/req" for s in RESOURCE_SIDES), "total µs/req",
              "server cores used"]
    cells = summary.servers_in(config)
    ceiling = summary.ceiling_for(config)
    rows = []
    for cell in cells + ([ceiling] if ceiling else []):
        stats = [cell.cpu_us_per_req.get(side) for side in RESOURCE_SIDES]
        present = [s for s in stats if s is not None]
        total = sum(s.value for s in present) if present else None
        name = (cell.display_name if cell.role != "ceiling"
                else f"{cell.server} ({cell.runs[0].tool})")
        rows.append([name]
                    + [with_spread(s) if s is not None else ABSENT for s in stats]
                    + [num(total), with_spread(cell.cores.get("server")) if cell.cores.get("server")
                       else ABSENT])
    return table(header, rows)


# --------------------------------------------------------------------------------------------
# Python overhead


def _python_overhead(summary: Summary, configs: list[Config]) -> list[str]:
    out = ["## Python overhead", "",
           "Server CPU per request of each Python server minus that of a reference doing the same "
           "work: `candle` (Rust, same model) and the server's own floor (same Python stack, no "
           "model); Python's floor is also set against Rust's. The difference is split over the "
           "stages whose wall time is CPU time (parse, pre, infer, post). What remains is spent "
           "where no timer separates work from waiting: DB driver encoding and decoding (inside "
           "`db`), HTTP parsing and writing, the event loop, task scheduling. Stage times are wall "
           "clock, so they match CPU time best when the server has a core of its own (PIN=1).", ""]
    any_rows = False
    for config in configs:
        overheads = summary.overheads_in(config)
        if not overheads:
            continue
        any_rows = True
        out += [f"### {config.label}", ""]
        out += [f"- {overhead_sentence(o)}" for o in overheads]
        out += ["", overhead_table(overheads), ""]
    if not any_rows:
        out += ["No Python server had a reference in these results (needs `candle`, or a Python "
                "server with backend `none`, and CPU figures).", ""]
    return out


def overhead_sentence(o: Overhead) -> str:
    subject, reference = o.subject.server, o.reference.server
    a = o.subject.cpu_us_per_req["server"]
    more = "more" if o.cpu_delta_us >= 0 else "less"
    ratio = f" ({o.cpu_ratio:.1f}×)" if o.cpu_ratio else ""
    if o.relation == "own floor":
        lead = (f"**{subject}** against its own floor {reference}: the model path costs "
                f"{num(abs(o.cpu_delta_us))} µs {more} server CPU per request{ratio}")
    elif o.relation == "Rust floor":
        lead = (f"**{subject}**, Python's DB+HTTP floor, uses {num(abs(o.cpu_delta_us))} µs {more} "
                f"server CPU per request than {reference}, Rust's{ratio}")
    else:
        lead = (f"**{subject}** uses {num(a.value)} µs of server CPU per request, "
                f"{num(abs(o.cpu_delta_us))} µs {more} than {reference}{ratio}")
    if o.significant is False:
        lead += " — not significant: within the run-to-run spread"
    elif o.significant is None:
        lead += " (single run: significance unknown)"
    if o.stage_delta_us is None:
        return lead + "; no stage figures to split it."
    parts = sorted(((name, d) for name, d in o.stage_delta_us.items() if abs(d) >= 0.5),
                   key=lambda item: -abs(item[1]))
    split = ", ".join(f"{STAGE_LABELS[name]} {signed(d)}" for name, d in parts)
    rest = f"{signed(o.unattributed_us)} µs outside those stages"
    return f"{lead}: {split + ', ' if split else ''}{rest}."


def overhead_table(overheads: list[Overhead]) -> str:
    header = (["server", "against", "server CPU µs/req", "reference µs/req", "Δ µs/req", "ratio"]
              + [f"Δ {STAGE_LABELS[s]}" for s in ATTRIBUTED_STAGES]
              + ["Δ elsewhere", "significant"])
    rows = []
    for o in overheads:
        a, b = o.subject.cpu_us_per_req["server"], o.reference.cpu_us_per_req["server"]
        deltas = ([signed(o.stage_delta_us[s]) for s in ATTRIBUTED_STAGES]
                  if o.stage_delta_us is not None else [NOT_RECORDED] * len(ATTRIBUTED_STAGES))
        verdict = {True: "yes", False: "no (within spread)", None: "unknown (1 run)"}[o.significant]
        rows.append([o.subject.server, f"{o.reference.server} ({o.relation})", with_spread(a),
                     with_spread(b), signed(o.cpu_delta_us),
                     f"{o.cpu_ratio:.2f}×" if o.cpu_ratio else NOT_RECORDED, *deltas,
                     signed(o.unattributed_us), verdict])
    return table(header, rows, align="ll" + "r" * (len(header) - 3) + "l")


# --------------------------------------------------------------------------------------------
# Environment, variation, warnings


def _compact(value: Any) -> str:
    """One cell's worth of a JSON value: nested objects inline, as `key value, ...`."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
        return f"({inner})" if inner else ABSENT
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value) or ABSENT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return ABSENT
    return str(value)


def _env_rows(env: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, value in env.items():
        if key in ENV_SKIP:
            continue
        if isinstance(value, dict):
            text = "; ".join(f"{k}: {_compact(v)}" for k, v in value.items()) or ABSENT
        else:
            text = _compact(value)
        rows.append([f"`{key}`", text.replace("|", "\\|")])
    return rows


def _environment(summary: Summary) -> list[str]:
    out = ["## Environment", ""]
    env = summary.results.env
    if env:
        out += [table(["env.json", "value"], _env_rows(env), align="ll"), ""]
        servers = env.get("servers")
        if isinstance(servers, dict) and servers:
            rows = []
            for name, info in servers.items():
                info = info if isinstance(info, dict) else {}
                build = info.get("build")
                rows.append([name, _compact(info.get("backend")), _compact(info.get("language")),
                             _compact(build).strip("()") if build else ABSENT])
            out += ["Servers (their full command lines are in env.json):", "",
                    table(["server", "backend", "language", "build"], rows, align="llll"), ""]
    else:
        out += ["env.json was not recorded: machine, versions and git SHA are unknown.", ""]
    settings = {attr: _values(values) for attr, values in settings_of(summary).items()}
    tools = ", ".join(sorted({r.tool for r in summary.results.runs if not r.is_ceiling}))
    out += ["Settings in the run records: "
            f"workers {settings['workers']}; pool size {settings['pool_size']}; "
            f"top_k {settings['top_k']}; {settings['duration_s']} s measured after "
            f"{settings['warmup_s']} s warm-up; load generator {tools}.", ""]
    return out


def _variation(summary: Summary, configs: list[Config]) -> list[str]:
    cells = [c for cfg in configs for c in summary.servers_in(cfg) if len(c.runs) > 1]
    if not cells:
        return ["Single runs only: run-to-run spread is unknown, so no difference is marked "
                "significant.", ""]
    rows = []
    for cell in cells:
        def cv(stat: Stat | None) -> str:
            return NOT_RECORDED if stat is None or stat.cv is None else f"{stat.cv:.1%}"
        rows.append([cell.server, cell.config.label, str(len(cell.runs)), cv(cell.rps),
                     cv(cell.latency_us.get(99)), cv(cell.cpu_us_per_req.get("server"))])
    return ["Run-to-run variation (coefficient of variation over repeats):", "",
            table(["server", "configuration", "runs", "requests/s", "p99", "server CPU/req"],
                  rows, align="llrrrr"), ""]


def _warnings(summary: Summary) -> list[str]:
    out = ["## Warnings", ""]
    if not summary.warnings:
        return out + ["None: no errors, no non-2xx responses, no saturated load generator, "
                      "spread within 10%.", ""]
    ordered = sorted(summary.warnings, key=lambda w: (w.where != "machine", w.where, w.source))
    out += [f"- [{w.source}] {w.where}: {w.text}" for w in ordered]
    return out + [""]


# --------------------------------------------------------------------------------------------
# compare


def _values(values: list) -> str:
    return ", ".join(NOT_RECORDED if v is None else f"{v:g}" if isinstance(v, float) else str(v)
                     for v in values)


def _compare_value(stat: Stat) -> str:
    return with_spread(stat) + (MEDIAN_MARK if stat.how == "median-of-runs" else "")


def render_compare(a: Summary, b: Summary, rows: list[CompareRow], only_a: list[str],
                   only_b: list[str]) -> str:
    out = ["# compare: B/A", "", f"A = {a.results.path}", f"B = {b.results.path}", "",
           "B/A is the ratio of the printed values (medians, pooled means or merged percentiles, "
           "as in the report); the range pairs any repeat of A with any repeat of B; a "
           "difference is significant when the two ranges over repeats do not overlap. "
           f"{MEDIAN_MARK} marks a percentile that is a median over runs (no histogram).", ""]
    settings_a, settings_b = settings_of(a), settings_of(b)
    differ = [f"{attr} (A: {_values(settings_a[attr])}; B: {_values(settings_b[attr])})"
              for attr in settings_a if settings_a[attr] != settings_b[attr]]
    if differ:
        out += ["**Settings differ**, so part of any difference comes from them: "
                + ", ".join(differ) + ".", ""]
    if a.warnings or b.warnings:
        out += [f"A has {len(a.warnings)} warning(s), B {len(b.warnings)}: their reports list "
                f"them.", ""]
    body = []
    for row in rows:
        ratio_range = row.ratio_range
        verdict = {True: "yes", False: "no (ranges overlap)",
                   None: "unknown (1 run)"}[row.significant]
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else NOT_RECORDED
        spread_text = (f"{ratio_range[0]:.3f}–{ratio_range[1]:.3f}" if ratio_range
                       else NOT_RECORDED)
        body.append([row.config.label, row.server, row.metric.name, _compare_value(row.a),
                     _compare_value(row.b), ratio, spread_text, verdict])
    if body:
        out.append(table(["configuration", "server", "metric", "A", "B", "B/A", "B/A range",
                          "significant"],
                         body, align="lllrrrrl"))
    else:
        out.append("A and B have no (configuration, server) in common.")
    if only_a:
        out += ["", "Only in A: " + "; ".join(only_a)]
    if only_b:
        out += ["", "Only in B: " + "; ".join(only_b)]
    return "\n".join(out) + "\n"
