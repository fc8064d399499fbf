"""Markdown for the report and for `compare`, from an aggregated Summary (no computation here
beyond presentation: units, rounding, markers).

A figure that was not measured is "n/a" with its reason in a footnote under its table, never 0 and
never part of a sum. A cell whose runs are all invalid is struck through (`~~1,234~~`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from rankbench.contract import COMPUTE_STAGES
from rankbench.servers import PUBLISHED_CONCURRENCY
from rankbench.thresholds import POSITION_EFFECT, RESPONSE_SIZE_TOLERANCE, SPREAD_WARNING

from analysis import figures
from analysis.comparisons import (CALIBRATION_KEYS, HEADLINE_METRICS, STEPS, CompareRow,
                                  Decomposition, FacetPair, Undecomposed, calibration,
                                  calibration_ratios, settings_of)
from analysis.load import (CEILING, HANDLER_TOTAL, MEASURED_STAGES, PGBENCH, RESOURCE_SIDES,
                           Config, Results)
from analysis.batching import batching, mean_batch_size, variant
from analysis.ladder import Ladder, ladder
from analysis.matrix import RUNTIME_LABELS, Matrix, matrix
from analysis.stats import Stat, choose_winner
from analysis.summaries import (PERCENTILES, REFERENCE_LABELS, WRK_KEYS, ServerSummary, Summary,
                                position_effects)

REPORT_FILE = "report.md"
MAX_DETAIL_CONFIGS = 4
MEDIAN_MARK = "*"
NOT_RECORDED = "n/a"
NOT_APPLICABLE = "—"

STAGE_LABELS = {"parse": "parse", "db": "db", "pre": "pre", "infer": "infer", "post": "post",
                "rest": "rest of handler"}
ENV_SKIP = ("schema", "servers", "calibration")  # each gets a paragraph of its own
SIDE_LABELS = {"server": "server", "db": "database", "load": "load generator"}
FACET_COLUMNS = ("language", "http", "runtime", "interpreter", "variant", "role", "floor")
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


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


def struck(cell: ServerSummary, text: str) -> str:
    """A figure from invalid runs only: shown, but struck through."""
    return f"~~{text}~~" if cell.all_invalid and text not in ("", NOT_APPLICABLE) else text


def table(header: list[str], rows: Iterable[list[str]], align: str | None = None) -> str:
    """A Markdown table; `align` is one letter per column, 'l' or 'r' (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Footnotes:
    """n/a with its reason: `na(reason)` gives "n/a¹"; `lines()` the notes, one per reason."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def na(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return NOT_RECORDED + str(self.reasons.index(reason) + 1).translate(SUPERSCRIPTS)

    def value(self, stat: Stat | None, reason: str, render=num) -> str:
        return self.na(reason) if stat is None else with_spread(stat, render)

    def lines(self) -> list[str]:
        if not self.reasons:
            return []
        return [" ".join(f"{NOT_RECORDED}{str(i).translate(SUPERSCRIPTS)}: {reason}."
                         for i, reason in enumerate(self.reasons, start=1)), ""]


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
        notes = Footnotes()
        out += [f"### {config.label}", "", headline_table(summary, config, notes), ""]
        out += notes.lines()
        out += _reference_lines(summary, config)
    out += _invalid_runs(summary)
    out += _pairs(summary, configs)
    out += ["## Latency percentiles (ms, as seen by the load generator)", ""]
    for config in configs:
        notes = Footnotes()
        out += [f"### {config.label}", "", latency_table(summary, config, notes), ""]
        out += notes.lines()
    out += _latency_notes(summary, configs)
    out += ["## Where the time goes: stage breakdown (mean µs per request)", "",
            "Stages are the servers' own wall-clock timers (contract, \"Stages\"); `db` includes "
            "waiting for a pooled connection. *Rest of handler* is the handler total minus its "
            "stages: glue code and, in an asyncio server, waiting for the event loop to run the "
            "handler. *Outside handler* is the mean latency the client saw minus the handler total: "
            "network, queueing before the handler, HTTP framing.", ""]
    for config in configs:
        notes = Footnotes()
        out += [f"### {config.label}", "", stage_table(summary, config, notes), ""]
        out += notes.lines()
        out += image(f"stages:{config.slug}", f"stage breakdown, {config.label}")
        p99 = stage_p99_table(summary, config)
        if p99:
            out += ["p99 of each stage (µs):", "", p99, ""]
    out += ["## CPU cost per request (µs of CPU per request)", "",
            "CPU seconds of each process group during the measured window divided by the "
            "requests served. It depends on how fast the machine was that day, so it is comparable "
            "only as ratios between servers of one results folder; across days, through the "
            "machine calibration (Environment, and `make compare`).", ""]
    for config in configs:
        notes = Footnotes()
        out += [f"### {config.label}", "", cpu_table(summary, config, notes), ""]
        out += notes.lines()
        out += image(f"cpu:{config.slug}", f"CPU per request, {config.label}")
    out += _decompositions(summary, configs)
    out += _matrices(summary, configs)
    out += _ladders(summary, configs, image)
    out += _batching_section(summary, configs)
    out += _wire(summary, configs)
    sweep = [("throughput_vs_concurrency", "goodput vs concurrency"),
             ("p99_vs_throughput", "p99 latency vs goodput"),
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
    out += _runs(summary, configs)
    out += _findings(summary)
    return "\n".join(out).rstrip() + "\n"


def _title(summary: Summary, configs: list[Config]) -> list[str]:
    runs = summary.results.runs
    stamps = sorted(r.started_at for r in runs if r.started_at)
    when = f"{stamps[0]} to {stamps[-1]}" if stamps else "start times not recorded"
    repeats = summary.repeats
    repeat_text = (f"{repeats[0]} valid repeat{'s' if repeats[0] != 1 else ''}"
                   if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]} valid repeats")
    merged = all(c.latency_merged for c in summary.cells.values())
    invalid = len(summary.invalid_runs)
    lines = [
        f"# rankbench report: {summary.results.name}", "",
        f"{len(runs)} measured runs ({when}), {len(summary.configs)} configuration"
        f"{'s' if len(summary.configs) != 1 else ''}, {repeat_text} per server"
        + (f"; {invalid} invalid run{'s' if invalid != 1 else ''} left out (listed apart)."
           if invalid else "."), "",
        "How to read it:",
        "- The headline is goodput: 2xx responses per second. All responses per second stand "
        "beside it. A run with any non-2xx response or socket error is invalid: it is left out of "
        "every figure and listed under *Invalid runs*; a server whose runs are all invalid keeps "
        "its figures struck through (~~like this~~).",
        "- Goodput, cores used and peak RSS are medians over repeats; **±** is the largest "
        "distance of any repeat from the printed value.",
        "- Per-request means (stages, CPU per request) pool every request of every repeat, so the "
        "parts add up to the whole. CPU per request is comparable as ratios within one results "
        "folder, not across machines or days.",
        "- Latency percentiles are " + (
            "those of all requests of all repeats: the repeats' latency histograms are merged "
            "(counts added)." if merged else
            "those of all requests of all repeats (merged histograms) where every repeat "
            "recorded a histogram; otherwise "
            f"they are medians over repeats of each run's percentile (marked {MEDIAN_MARK}), "
            "which is not the percentile of all requests."),
        f"- {NOT_RECORDED} marks a figure that was not measured; its footnote says why. It is never "
        "counted as 0.",
        "- A winner is named only when its range over repeats does not overlap the runner-up's; "
        "otherwise the row says *not significant*. Floors (no model) and the database references "
        "are references, not contestants.", ""]
    if summary.findings:
        count = len(summary.findings)
        lines += [f"**{count} finding{'s' if count != 1 else ''}** (listed at the end) qualify "
                  f"these figures.", ""]
    if len(configs) < len(summary.configs):
        lines += [f"Tables show {len(configs)} of the {len(summary.configs)} configurations (the "
                  f"highest concurrency); the sweep figures show all of them, and "
                  f"`python -m analysis report {summary.results.path} --all` tabulates every one.",
                  ""]
    return lines


def headline_table(summary: Summary, config: Config, notes: Footnotes) -> str:
    cells = summary.servers_in(config)
    contestants = [c for c in cells if c.role == "model" and not c.all_invalid]
    header = [""] + [c.display_name for c in cells] + ["winner"]
    rows = []
    for metric in HEADLINE_METRICS:
        if metric.needs and summary.reference_for(config, metric.needs) is None:
            continue
        render = percent if metric.share else num
        stats = {c.server: metric.get(summary, c) for c in cells}
        verdict = (choose_winner([(c.server, stats[c.server]) for c in contestants],
                                 metric.higher_is_better).text if metric.has_winner else
                   NOT_APPLICABLE)
        rows.append([metric.name]
                    + [struck(c, notes.value(stats[c.server], metric.missing, render))
                       for c in cells]
                    + [verdict])
    return table(header, rows, align="l" + "r" * len(cells) + "l")


def _reference_lines(summary: Summary, config: Config) -> list[str]:
    out = []
    for kind in (CEILING, PGBENCH):
        reference = summary.reference_for(config, kind)
        if reference is None:
            if kind == CEILING:
                out += ["No database ceiling was recorded for this configuration.", ""]
            continue
        client = reference.runs[0].record["client"]
        clients = client.get("clients") or client.get("connections")
        how = (f"{clients} connections" if isinstance(clients, int) and clients != config.concurrency
               else f"concurrency {config.concurrency}")
        text = (f"{REFERENCE_LABELS[kind]}: {struck(reference, with_spread(reference.goodput))} "
                f"transactions/s ({reference.runs[0].tool}, {how}).")
        if kind == CEILING:
            text += " No server should exceed it."
        else:
            text += (" Text results cost the database more than the servers' binary ones, so a "
                     "server may exceed it: it is a reference, not a bound.")
        out += [text, ""]
    return out


def _invalid_runs(summary: Summary) -> list[str]:
    invalid = summary.invalid_runs
    if not invalid:
        return []
    out = ["## Invalid runs", "",
           "Left out of every figure (a run with any non-2xx response or socket error measured other "
           "work than the contract's):", ""]
    out += [f"- {run.label}: {'; '.join(run.invalid_reasons)}" for run in invalid]
    return out + [""]


def _pairs(summary: Summary, configs: list[Config]) -> list[str]:
    out = ["## What each pair of servers isolates", "",
           "Every pair of servers that differ in exactly one facet of the registry (language with "
           "its HTTP stack and interpreter, runtime, variant), with the difference in server CPU "
           "per request and in goodput. Pairs that differ in more than one facet isolate nothing "
           "and are not listed.", ""]
    body = _by_config(configs, lambda config: [f"- {pair_text(p)}"
                                               for p in summary.pairs_in(config)])
    return out + (body or ["No pair of servers in these results differs in exactly one facet.",
                           ""])


def _by_config(configs: list[Config], lines_of) -> list[str]:
    """'### <configuration>' and its lines, for each configuration that has any."""
    out = []
    for config in configs:
        lines = lines_of(config)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            out += [f"### {config.label}", "", *lines, ""]
    return out


def _verdict(significant: bool | None) -> str:
    return {True: "significant", False: "not significant: the ranges over repeats overlap",
            None: "single run: significance unknown"}[significant]


def pair_text(p: FacetPair) -> str:
    a, b = p.a.server, p.b.server
    cpu_a, cpu_b = p.a.cpu_us_per_req.get("server"), p.b.cpu_us_per_req.get("server")
    if p.cpu_delta_us is None:
        cpu = "server CPU per request: n/a (not recorded for both servers)"
    else:
        cpu = (f"server CPU per request {a} {with_spread(cpu_a)} µs vs {b} {with_spread(cpu_b)} µs, "
               f"Δ {signed(p.cpu_delta_us.value)} µs ({_verdict(p.cpu_significant)})")
    if p.goodput_ratio is None:
        goodput = f"goodput: n/a ({b} answered no 2xx response)"
    else:
        goodput = (f"goodput {a} {with_spread(p.a.goodput)}/s vs {b} {with_spread(p.b.goodput)}/s, "
                   f"{p.goodput_ratio.value:.2f}× ({_verdict(p.goodput_significant)})")
    return f"{p.sentence}. {cpu[0].upper() + cpu[1:]}; {goodput}."


def latency_table(summary: Summary, config: Config, notes: Footnotes) -> str:
    header = ["server"] + [f"{p:g}%" for p in PERCENTILES] + ["from"]
    rows = []
    for cell in summary.servers_in(config):
        values = []
        recorded = bool(cell.runs[0].latency_us) or cell.latency_merged
        for p in PERCENTILES:
            stat = cell.latency_us.get(p)
            if stat is None:
                values.append(notes.na(
                    "the run records hold no latency figures" if not recorded or p in WRK_KEYS
                    else "wrk reports 50/75/90/95/99/99.9/99.99% and the maximum; this percentile "
                         "needs a latency histogram and is not interpolated"))
                continue
            mark = MEDIAN_MARK if stat.how == "median-of-runs" else ""
            values.append(struck(cell, num(stat.value / 1000) + mark))
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
    notes.append("100% is the largest latency of any run (exact).")
    return [" ".join(notes), ""]


def _stage(cell: ServerSummary, name: str) -> Stat | None:
    return cell.rest_of_handler_us if name == "rest" else cell.stage_mean_us.get(name)


def stage_table(summary: Summary, config: Config, notes: Footnotes) -> str:
    header = ["server", *MEASURED_STAGES, "rest of handler", "handler total", "outside handler",
              "client mean"]
    rows = []
    for cell in summary.servers_in(config):
        if not cell.has_stages:
            rows.append([cell.display_name, "no stage figures recorded"]
                        + [""] * (len(header) - 2))
            continue
        values = [num(s.value) if (s := _stage(cell, n)) else
                  notes.na(f"the server recorded no `{n}` stage") for n in MEASURED_STAGES]
        values.append(num(cell.rest_of_handler_us.value))
        values.append(num(cell.stage_mean_us[HANDLER_TOTAL].value))
        mean_na = "the run records hold no client mean latency"
        values += [num(cell.outside_handler_us.value) if cell.outside_handler_us
                   else notes.na(mean_na),
                   num(cell.latency_mean_us.value) if cell.latency_mean_us else notes.na(mean_na)]
        rows.append([cell.display_name] + [struck(cell, v) for v in values])
    return table(header, rows)


def stage_p99_table(summary: Summary, config: Config) -> str:
    cells = [c for c in summary.servers_in(config) if c.has_stages]
    if not cells:
        return ""
    notes = Footnotes()
    header = ["server", *MEASURED_STAGES, "handler total", "from"]
    rows = []
    for cell in cells:
        stats = {n: cell.stage_p99_us.get(n) for n in (*MEASURED_STAGES, HANDLER_TOTAL)}
        values = [notes.na(f"the server recorded no `{n}` stage") if s is None else
                  struck(cell, num(s.value) + (MEDIAN_MARK if s.how == "median-of-runs" else ""))
                  for n, s in stats.items()]
        hows = {s.how for s in stats.values() if s is not None}
        n = len(cell.runs)
        source = (f"merged stage histograms, {n} run{'s' if n != 1 else ''}" if hows == {"merged"}
                  else "1 run" if n == 1 else f"median of {n} runs{MEDIAN_MARK}")
        rows.append([cell.display_name] + values + [source])
    text = table(header, rows, align="l" + "r" * (len(header) - 2) + "l")
    return "\n".join([text, ""] + notes.lines()).rstrip()


def cpu_table(summary: Summary, config: Config, notes: Footnotes) -> str:
    header = ["server", *(f"{SIDE_LABELS[s]} µs/req" for s in RESOURCE_SIDES), "total µs/req",
              "server cores used"]
    rows = []
    for cell in summary.servers_in(config) + summary.references_for(config):
        values, parts, complete = [], [], True
        for side in RESOURCE_SIDES:
            stat = cell.cpu_us_per_req.get(side)
            if side == "server" and cell.is_reference:
                values.append(NOT_APPLICABLE)  # no HTTP server in a reference run
            elif stat is None:
                values.append(notes.na(f"the run records hold no {SIDE_LABELS[side]} CPU time"))
                complete = False
            else:
                values.append(with_spread(stat))
                parts.append(stat.value)
        values.append(num(sum(parts)) if complete else
                      notes.na("a part of the sum is n/a, so the sum is unknown"))
        cores = cell.cores.get("server")
        values.append(NOT_APPLICABLE if cell.is_reference else
                      with_spread(cores) if cores else
                      notes.na(f"the run records hold no server CPU time"))
        rows.append([cell.display_name] + [struck(cell, v) for v in values])
    return table(header, rows)


# --------------------------------------------------------------------------------------------
# Two-step decompositions


def _decompositions(summary: Summary, configs: list[Config]) -> list[str]:
    out = ["## Language overhead: a two-step decomposition", "",
           "For two model servers A and B of different languages whose floors FA and FB (the same "
           "stacks without a model) were measured, the difference in server CPU per request splits "
           "in two steps: (A − B) = (FA − FB) + ((A − FA) − (B − FB)). Step 1 is what the two "
           "stacks cost without any model (HTTP, database driver, event loop, interpreter); step 2 "
           "is what their model paths cost beyond their own floors. It is a decomposition, not an "
           "isolation: A and B may differ in more than one facet (the pairs above isolate one). "
           "The range is over repeats, each repeat's four runs combined. The split over the "
           "stages whose wall time is CPU time (parse, pre, infer, post) leaves *elsewhere*: "
           "database driver encoding and decoding (inside `db`), HTTP parsing and writing, the "
           "event loop, task scheduling. Stage times are wall clock, so they match CPU time best "
           "when the server has a core of its own (PIN=1).", ""]

    def lines_of(config: Config) -> list[str]:
        entries = summary.decompositions_in(config)
        done = [d for d in entries if isinstance(d, Decomposition)]
        lines = [f"- {decomposition_text(d)}" for d in done]
        lines += [f"- **{u.a.server} − {u.b.server}**: no decomposition: {u.reason}."
                  for u in entries if isinstance(u, Undecomposed)]
        if done:
            notes = Footnotes()
            lines += ["", decomposition_table(done, notes), ""] + notes.lines()
        return lines

    body = _by_config(configs, lines_of)
    return out + (body or ["No two model servers of different languages in these results (needs "
                           "the registry's facets and CPU figures).", ""])


def _range(stat: Stat) -> str:
    return "" if stat.n < 2 else f" (repeats {signed(stat.lo)} to {signed(stat.hi)})"


def decomposition_text(d: Decomposition) -> str:
    total, floors, paths = (d.steps[s] for s in STEPS)
    a, b = d.a.cpu_us_per_req["server"], d.b.cpu_us_per_req["server"]
    ratio = f" ({a.value / b.value:.1f}×)" if b.value else ""
    verdict = {True: "", False: "; not significant: within the run-to-run spread",
               None: "; single run: significance unknown"}[d.significant]
    return (f"**{d.a.server} − {d.b.server}** = {signed(total.value)} µs server CPU per request"
            f"{ratio}{verdict}. Step 1, floors {d.floor_a.server} − {d.floor_b.server}: "
            f"{signed(floors.value)} µs{_range(floors)}; step 2, model paths ({d.a.server} − "
            f"{d.floor_a.server}) − ({d.b.server} − {d.floor_b.server}): {signed(paths.value)} µs"
            f"{_range(paths)}.")


def decomposition_table(entries: list[Decomposition], notes: Footnotes) -> str:
    header = (["pair", "step", "µs/req", "range over repeats"]
              + [f"Δ {STAGE_LABELS[s]}" for s in COMPUTE_STAGES] + ["Δ elsewhere"])
    rows = []
    for d in entries:
        reason = "; ".join(d.missing) or "a stage figure is missing"
        for step in STEPS:
            stat = d.steps[step]
            deltas = [signed(v) if v is not None else notes.na(reason)
                      for v in d.stage_split[step].values()]
            elsewhere = d.elsewhere[step]
            rows.append([f"{d.a.server} − {d.b.server}", _step_label(d, step), signed(stat.value),
                         f"{signed(stat.lo)} to {signed(stat.hi)}" if stat.n > 1 else
                         "1 run",
                         *deltas,
                         signed(elsewhere) if elsewhere is not None else notes.na(
                             "the split over stages is n/a, so what lies outside them is unknown")])
    return table(header, rows, align="ll" + "r" * (len(header) - 2))


def _step_label(d: Decomposition, step: str) -> str:
    if step == "total":
        return f"{d.a.server} − {d.b.server}"
    if step == "floors":
        return f"1. floors {d.floor_a.server} − {d.floor_b.server}"
    return f"2. model paths"


# --------------------------------------------------------------------------------------------
# Language x runtime


MATRIX_METRICS = (
    ("goodput (ok/s)", lambda c: c.goodput, "no valid run"),
    ("server CPU per request (µs)", lambda c: c.cpu_us_per_req.get("server"),
     "server CPU was not recorded"),
    ("infer stage (mean µs per request)", lambda c: c.stage_mean_us.get("infer"),
     "the server reported no infer stage"),
)


def _matrices(summary: Summary, configs: list[Config]) -> list[str]:
    built = [m for m in (matrix(summary, c) for c in configs) if m is not None]
    if not built:
        return []
    out = ["## Language x runtime", "",
           "Each server stack (a row: language with its HTTP stack and interpreter) against each "
           "runtime (a column). A pair in one column holds the runtime constant, so the language "
           "cost is measured once per runtime; the estimates below agree when their ranges over "
           "repeats overlap. An empty cell is a combination this run did not measure.", ""]
    for m in built:
        out += [f"### {m.config.label}", ""]
        for title, get, reason in MATRIX_METRICS:
            notes = Footnotes()
            rows = [[row] + [struck(m.cells[(row, col)], notes.value(get(m.cells[(row, col)]),
                                                                      reason))
                             + f" ({m.cells[(row, col)].server})"
                             if (row, col) in m.cells else "" for col in m.columns]
                    for row in m.rows]
            out += [f"{title}:", "",
                    table(["stack"] + [RUNTIME_LABELS.get(c, c) for c in m.columns], rows), ""]
            out += notes.lines()
        out += _language_costs(m)
    return out


def _language_costs(m: Matrix) -> list[str]:
    rows = []
    for e in m.estimates:
        delta = e.cpu_delta_us
        rows.append([RUNTIME_LABELS.get(e.runtime, e.runtime),
                     f"{e.slower.server} − {e.faster.server}", signed(delta.value),
                     f"{signed(delta.lo)} to {signed(delta.hi)}" if delta.n > 1 else "1 run",
                     with_spread(e.cpu_ratio, _times),
                     with_spread(e.goodput_ratio, _times)])
    out = ["The language cost with the runtime held constant (server CPU µs per request; goodput "
           "ratio = the leaner server's over the other's):", "",
           table(["runtime", "pair", "Δ CPU µs/req", "range over repeats", "CPU ratio",
                  "goodput ratio"], rows, align="ll" + "r" * 4), ""]
    verdicts = []
    for a, b, agree in m.agreement():
        if a.cpu_delta_us.n < 2 or b.cpu_delta_us.n < 2:
            verdicts.append(f"{RUNTIME_LABELS.get(a.runtime, a.runtime)} and "
                            f"{RUNTIME_LABELS.get(b.runtime, b.runtime)}: one run each, agreement "
                            f"unknown")
        else:
            verdicts.append(f"{RUNTIME_LABELS.get(a.runtime, a.runtime)} "
                            f"({signed(a.cpu_delta_us.value)} µs) and "
                            f"{RUNTIME_LABELS.get(b.runtime, b.runtime)} "
                            f"({signed(b.cpu_delta_us.value)} µs) "
                            + ("agree: their ranges overlap" if agree else
                               "disagree: their ranges do not overlap"))
    if verdicts:
        out += ["Estimates: " + "; ".join(verdicts) + ".", ""]
    return out


# --------------------------------------------------------------------------------------------
# From the published stack to Candle


def _ladders(summary: Summary, configs: list[Config], image) -> list[str]:
    built = [lad for lad in (ladder(summary, c) for c in configs) if lad is not None]
    if not built:
        return []
    out = ["## From the published stack to Candle", "",
           "The ladder study's rungs in order (the registry's LADDER_RUNGS): each step changes one "
           "thing from the rung before it. A step's CPU change is in server CPU µs per request "
           "(negative: saved), its factor is goodput after / before; both with their range over "
           "repeats. The steps add up (CPU) and multiply (goodput) to the end-to-end figures by "
           "construction; their shares say how the whole divides (the goodput share on a log "
           "scale). Peak RSS is the server process tree's, median over repeats.", ""]
    for lad in built:
        notes = Footnotes()
        entries = ([(cell, step, True) for cell, step in lad.beside]
                   + [(lad.rungs[0], None, False)]
                   + [(step.after, step, False) for step in lad.steps])
        rows = []
        for cell, step, beside in entries:
            def share(value: float | None) -> str:
                return percent(value) if value is not None and not beside else NOT_APPLICABLE
            rows.append([f"beside: {cell.server}" if beside else cell.server,
                         notes.value(cell.cpu_us_per_req.get("server"),
                                     "server CPU was not recorded"),
                         _with_range(step.cpu_us) if step else NOT_APPLICABLE,
                         share(step.cpu_share(lad.cpu_total)) if step else NOT_APPLICABLE,
                         with_spread(cell.goodput),
                         with_spread(step.goodput_factor, _times) if step else NOT_APPLICABLE,
                         share(step.goodput_share(lad.goodput_total)) if step else
                         NOT_APPLICABLE,
                         notes.value(cell.rss_mb.get("server"), "peak RSS was not recorded"),
                         (f"from {step.before.server}: {step.change}" if beside else step.change)
                         if step else "the first rung"])
        out += [f"### {lad.config.label}", "",
                table(["rung", "server CPU µs/req", "step Δ CPU", "share of Δ", "goodput (ok/s)",
                       "step factor", "share of factor", "peak RSS MB", "what the step changes"],
                      rows, align="l" + "r" * 7 + "l"), ""]
        out += notes.lines()
        out += _ladder_totals(lad)
        out += image(f"ladder:{lad.config.slug}", f"server CPU per rung, {lad.config.label}")
    return out


def _times(value: float) -> str:
    return f"{value:.2f}×"


def _with_range(stat: Stat | None) -> str:
    return NOT_RECORDED if stat is None else signed(stat.value) + _range(stat)


def _ladder_totals(lad: Ladder) -> list[str]:
    first, last = lad.rungs[0].server, lad.rungs[-1].server
    out = []
    if lad.cpu_total is not None and lad.goodput_total is not None:
        out.append(f"End to end, {first} → {last}: server CPU {signed(lad.cpu_total.value)} µs per "
                   f"request{_range(lad.cpu_total)}, goodput {with_spread(lad.goodput_total, _times)}.")
    largest = lad.largest_step()
    if largest is not None:
        share = largest.goodput_share(lad.goodput_total)
        out.append(f"The step that moves goodput most: {largest.before.server} → "
                   f"{largest.after.server}, {_times(largest.goodput_factor.value)}"
                   + (f" ({percent(share)} of the end-to-end factor on a log scale)"
                      if share is not None else "") + ".")
    for p in lad.published:
        measured = (with_spread(p.measured, _times) if p.measured is not None
                    else f"n/a ({p.server} answered no 2xx response)")
        out.append(f"{last} / {p.server} goodput: {measured} here; the published study: "
                   f"{_times(p.published)}"
                   + (" (this configuration has the study's load shape: "
                      f"{lad.config.concurrency} closed-loop connections)" if lad.study_shape
                      else f" (the study's load shape is concurrency "
                           f"{PUBLISHED_CONCURRENCY}; this is {lad.config.concurrency})") + ".")
    return [" ".join(out), ""] if out else []


# --------------------------------------------------------------------------------------------
# Batching vs language


def _batching_section(summary: Summary, configs: list[Config]) -> list[str]:
    built = [b for b in (batching(summary, c) for c in configs) if b is not None]
    if not built:
        return []
    out = ["## Batching vs language", "",
           "Micro-batching servers (the `micro-batching` variant: requests queued while a batch is "
           "served go out together, one widened query pair and one inference call) beside the "
           "per-request servers they vary. CPU per request is pooled over repeats; the mean batch "
           "size is requests per batch from the server's own /stats. Factors are batching / "
           "per-request (goodput: higher is better; latency: lower is better), with the range of "
           "same-repeat ratios.", ""]
    for b in built:
        notes = Footnotes()
        rows = []
        for cell in b.cells:
            size = mean_batch_size(cell)
            rows.append([cell.display_name, variant(cell) or "?",
                         struck(cell, with_spread(cell.goodput)),
                         notes.value(cell.cpu_us_per_req.get("server"),
                                     "server CPU was not recorded"),
                         notes.value(cell.cpu_us_per_req.get("db"),
                                     "database CPU was not recorded"),
                         notes.value(_ms(cell.latency_us.get(50)), "not recorded"),
                         notes.value(_ms(cell.latency_us.get(99)), "not recorded"),
                         num(size) if size is not None else NOT_APPLICABLE])
        out += [f"### {b.config.label}", "",
                table(["server", "variant", "goodput (ok/s)", "server CPU µs/req",
                       "database CPU µs/req", "p50 ms", "p99 ms", "mean batch size"], rows,
                      align="ll" + "r" * 6), ""]
        out += notes.lines()
        for pair in b.pairs:
            out.append(f"- {pair.batching.server} / {pair.per_request.server}: goodput "
                       f"{with_spread(pair.goodput_factor, _times)}, p50 "
                       f"{with_spread(pair.p50_factor, _times)}, p99 "
                       f"{with_spread(pair.p99_factor, _times)}.")
        for python, rust, factor in b.across:
            out.append(f"- {python.server} / {rust.server} ({rust.facts.get('variant')}): goodput "
                       f"{with_spread(factor, _times)}.")
        out.append("")
    return out


def _ms(stat: Stat | None) -> Stat | None:
    return stat.scaled(1e-3) if stat is not None else None


# --------------------------------------------------------------------------------------------
# Equal work on the wire


def _wire(summary: Summary, configs: list[Config]) -> list[str]:
    sizes = summary.results.body_bytes()
    out = ["## Equal work on the wire", "",
           "Mean response body per server over the same fixed requests before any load (verify), "
           "and bytes per response under load (wrk's bytes over responses, headers included). Only "
           f"bodies are checked: servers with real scores must agree within "
           f"{RESPONSE_SIZE_TOLERANCE:.0%}, and floors among themselves; HTTP stacks send different "
           "headers.", ""]
    if summary.results.verify is None:
        out += ["verify.json is not in the results folder: response bodies were not measured.", ""]
    names = summary.server_names()
    any_bytes = any(c.bytes_per_response for c in summary.cells.values())
    if not sizes and not any_bytes:
        return out + ["No response sizes were recorded.", ""]
    notes = Footnotes()
    header = (["server", "verify: mean body (bytes)"]
              + [f"bytes/response, {cfg.label}" for cfg in configs])
    rows = []
    for name in names:
        row = [name, num(sizes[name]) if name in sizes else notes.na(
            "not in verify.json" if summary.results.verify is not None else "no verify.json")]
        for cfg in configs:
            cell = summary.cells.get((cfg, name))
            if cell is None:
                row.append(NOT_APPLICABLE)
            else:
                row.append(struck(cell, notes.value(cell.bytes_per_response,
                                                    "the run records hold no byte count")))
        rows.append(row)
    return out + [table(header, rows), ""] + notes.lines()


# --------------------------------------------------------------------------------------------
# Environment, variation, runs, findings


def _compact(value: Any) -> str:
    """One cell's worth of a JSON value: nested objects inline, as `key value, ...`."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
        return f"({inner})" if inner else NOT_APPLICABLE
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value) or NOT_APPLICABLE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return NOT_APPLICABLE
    return str(value)


def _env_rows(env: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, value in env.items():
        if key in ENV_SKIP:
            continue
        if isinstance(value, dict):
            text = "; ".join(f"{k}: {_compact(v)}" for k, v in value.items()) or NOT_APPLICABLE
        else:
            text = _compact(value)
        rows.append([f"`{key}`", text.replace("|", "\\|")])
    return rows


def calibration_text(results: Results) -> str:
    figures_ = calibration(results)
    recorded = results.calibration or {}
    if not any(figures_.values()):
        return ("No machine calibration was recorded (results before schema 2): CPU per request "
                "of this folder cannot be put on the scale of another day's.")
    loops = ", ".join(f"{label} {num(figures_[key]) if figures_[key] else NOT_RECORDED}"
                      for key, label in CALIBRATION_KEYS)
    what = "; ".join(f"{k.split('_')[0]}: {_compact(recorded[k])}"
                     for k in ("python_loop", "native_loop") if recorded.get(k))
    when = f", measured {recorded['measured_at']}" if recorded.get("measured_at") else ""
    return (f"Machine calibration{when}: {loops}{' (' + what + ')' if what else ''}. How fast the "
            f"machine was that day: `make compare` divides two folders' figures to tell a change "
            f"of the code from a change of the machine.")


def _environment(summary: Summary) -> list[str]:
    results = summary.results
    out = ["## Environment", ""]
    env = results.env
    if env:
        out += [table(["env.json", "value"], _env_rows(env), align="ll"), ""]
    else:
        out += ["env.json was not recorded: machine, versions and git SHA are unknown.", ""]
    out += [calibration_text(results), ""]
    out += _server_facets(summary)
    settings = {attr: _values(values) for attr, values in settings_of(summary).items()}
    tools = ", ".join(sorted({r.tool for r in results.runs if not r.is_reference}))
    out += ["Settings in the run records: "
            f"workers {settings['workers']}; pool size {settings['pool_size']}; "
            f"top_k {settings['top_k']}; {settings['duration_s']} s measured after "
            f"{settings['warmup_s']} s warm-up; load generator {tools}.", ""]
    return out


def _server_facets(summary: Summary) -> list[str]:
    results = summary.results
    env_servers = (results.env or {}).get("servers")
    env_servers = env_servers if isinstance(env_servers, dict) else {}
    threads: dict[str, str] = {}
    for run in results.runs:
        if run.runtime_threads and run.server not in threads:
            threads[run.server] = _compact(run.runtime_threads).strip("()")
    header = ["server", *FACET_COLUMNS, "facets from", "build"]
    if threads:
        header.insert(-1, "runtime threads (as reported)")
    rows = []
    for name in summary.server_names():
        facts = results.servers[name]
        info = env_servers.get(name) if isinstance(env_servers.get(name), dict) else {}
        build = info.get("build")
        row = [name] + [_compact(facts.get(k)) if facts.known else "?" for k in FACET_COLUMNS]
        row += [facts.source]
        if threads:
            row.append(threads.get(name, NOT_RECORDED))
        row.append(_compact(build).strip("()") if build else NOT_APPLICABLE)
        rows.append(row)
    out = ["Servers (registry facets; their full command lines are in env.json):", "",
           table(header, rows, align="l" * len(header)), ""]
    filled = sorted(n for n in summary.server_names() if results.servers[n].from_registry)
    if filled:
        out += [f"Facets of {', '.join(filled)} are not (all) in env.json (results before schema 2): "
                f"they are taken from `rankbench.servers.SERVERS` by name, i.e. the registry of the "
                f"checkout that wrote this report.", ""]
    unknown = sorted(n for n in summary.server_names() if not results.servers[n].known)
    if unknown:
        out += [f"Facets unknown (neither in env.json nor registered): {', '.join(unknown)}; "
                f"they take part in no pair and no decomposition.", ""]
    return out


def _variation(summary: Summary, configs: list[Config]) -> list[str]:
    cells = [c for cfg in configs for c in summary.servers_in(cfg) if len(c.runs) > 1]
    out = ["## Variation and run order", ""]
    if not cells:
        out += ["Single runs only: run-to-run spread is unknown, so no difference is marked "
                "significant.", ""]
    else:
        notes = Footnotes()

        def cv(stat: Stat | None, what: str) -> str:
            if stat is None:
                return notes.na(f"the run records hold no {what}")
            return notes.na("the mean is 0") if stat.cv is None else f"{stat.cv:.1%}"

        rows = [[cell.server, cell.config.label, str(len(cell.runs)), cv(cell.goodput, "goodput"),
                 cv(cell.latency_us.get(99), "p99 latency"),
                 cv(cell.cpu_us_per_req.get("server"), "server CPU time")] for cell in cells]
        out += ["Run-to-run variation (coefficient of variation over valid repeats):", "",
                table(["server", "configuration", "runs", "goodput", "p99", "server CPU/req"],
                      rows, align="llrrrr"), ""] + notes.lines()
    return out + _positions(summary)


def _positions(summary: Summary) -> list[str]:
    effects = position_effects(summary)
    if not effects:
        return []
    positions = sorted({p for e in effects for p in e.ratios})
    rows = [[e.server] + [f"{e.median(p):.1%} ({len(e.ratios[p])})" if p in e.ratios
                          else NOT_APPLICABLE for p in positions] for e in effects]
    return ["Run order: each run's goodput as a share of its cell's median goodput, median by "
            "position in its repeat's (rotated) order, with the number of runs. A position effect "
            f"above {POSITION_EFFECT:.0%} beyond the spread is listed among the findings.", "",
            table(["server"] + [f"position {p}" for p in positions], rows), ""]


def _runs(summary: Summary, configs: list[Config]) -> list[str]:
    out = ["## Runs", ""]
    positioned = any(r.position is not None for r in summary.results.runs)
    header = (["server", "repeat"] + (["position"] if positioned else [])
              + ["goodput (2xx/s)", "all responses/s", "server CPU µs/req", "server cores used",
                 "valid"])
    for config in configs:
        notes = Footnotes()
        cells = summary.servers_in(config) + summary.references_for(config)
        by_key = {r.key: r for c in cells for r in (*c.runs, *c.invalid_runs)}
        runs = sorted(by_key.values(), key=lambda r: (
            r.repeat, r.position if r.position is not None else -1, r.server))
        rows = []
        for run in runs:
            cpu, cores = run.cpu_us_per_req("server"), run.cores_used("server")
            rows.append([run.server, str(run.repeat)]
                        + ([str(run.position) if run.position is not None else
                            notes.na("the run record holds no position in the run order")]
                           if positioned else [])
                        + [num(run.goodput_rps), num(run.rps),
                           _run_figure(run, cpu, notes), _run_figure(run, cores, notes),
                           "yes" if run.valid else "no: " + "; ".join(run.invalid_reasons)])
        out += [f"### {config.label}", "", table(header, rows, align="l" + "r" * (len(header) - 2)
                                                 + "l"), ""] + notes.lines()
    return out


def _run_figure(run, value: float | None, notes: Footnotes) -> str:
    if value is not None:
        return num(value)
    if run.is_reference:
        return NOT_APPLICABLE  # no HTTP server in a reference run
    return notes.na("the run record holds no server CPU time")


def _findings(summary: Summary) -> list[str]:
    out = ["## Findings", ""]
    if not summary.findings:
        return out + ["None: no errors, no non-2xx responses, no saturated load generator, "
                      f"spread within {SPREAD_WARNING:.0%}, no position effect seen, no unequal "
                      "response bodies seen, no server above the database ceiling.", ""]
    ordered = sorted(summary.findings, key=lambda w: (w.where != "machine", w.where, w.source))
    out += [f"- [{w.source}] {w.where}: {w.text}" for w in ordered]
    return out + [""]


# --------------------------------------------------------------------------------------------
# compare


def _values(values: list) -> str:
    return ", ".join(NOT_RECORDED if v is None else f"{v:g}" if isinstance(v, float) else str(v)
                     for v in values)


def _compare_value(stat: Stat) -> str:
    return with_spread(stat) + (MEDIAN_MARK if stat.how == "median-of-runs" else "")


def calibration_table(a: Results, b: Results) -> str:
    ca, cb, ratios = calibration(a), calibration(b), calibration_ratios(a, b)
    rows = [[label, num(ca[key]) if ca[key] else NOT_RECORDED,
             num(cb[key]) if cb[key] else NOT_RECORDED,
             f"{ratios[key]:.3f}" if ratios[key] else NOT_RECORDED]
            for key, label in CALIBRATION_KEYS]
    return table(["machine calibration", "A", "B", "B/A"], rows)


def render_compare(a: Summary, b: Summary, rows: list[CompareRow], only_a: list[str],
                   only_b: list[str]) -> str:
    out = ["# compare: B/A", "", f"A = {a.results.path}", f"B = {b.results.path}", "",
           "B/A is the ratio of the printed values (medians over valid repeats, pooled means or "
           "merged percentiles, as in the report); the range pairs any repeat of A with any repeat "
           "of B; a difference is significant when the two ranges over repeats do not overlap. "
           f"{MEDIAN_MARK} marks a percentile that is a median over runs (no histogram).", "",
           "How fast each machine was that day: CPU per request and throughput move with it, so "
           "a B/A near the calibration's B/A is the machine, not the code.", "",
           calibration_table(a.results, b.results), ""]
    settings_a, settings_b = settings_of(a), settings_of(b)
    differ = [f"{attr} (A: {_values(settings_a[attr])}; B: {_values(settings_b[attr])})"
              for attr in settings_a if settings_a[attr] != settings_b[attr]]
    if differ:
        out += ["**Settings differ**, so part of any difference comes from them: "
                + ", ".join(differ) + ".", ""]
    if a.findings or b.findings:
        out += [f"A has {len(a.findings)} finding(s), B {len(b.findings)}: their reports list "
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
