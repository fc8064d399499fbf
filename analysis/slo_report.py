"""`python -m analysis.slo_report RESULTS`: slo.md and its figure from an open-loop study
(a results folder written by `python -m bench.slo`, i.e. `make bench-slo`).

The report shows, per server: latency against offered load (p50 and p99 on a log axis, the
objective drawn; runs that missed the offered rate drawn hollow); a capacity table (requests/s
within the objective by rankbench/slo.py's rule, at SLO_P99_MS and at 10 and 50 ms where the same
runs bound it, and the number of servers needed for a given rate); capacity ratios for pairs of
servers chosen by their registry facets (every pair that differs only in language, and each Rust
model server against each per-request Python ONNX Runtime server, the published comparison) set
beside their closed-loop throughput ratio, with one generated sentence on why the two differ; and
every run's figures.

Loading (analysis.load: the folder's schema is checked), computing (rankbench.slo) and formatting
are separate sections; the figure uses matplotlib's object API, as analysis/figures.py does.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from rankbench import slo as rules
from rankbench.servers import NO_MODEL, PER_REQUEST, differing_facets, isolated_facet

from analysis.load import ResultsError, Run, load_results

SCENARIO = "slo"
TARGET_RPS = 10_000
DPI = 100
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]


# -- loading ------------------------------------------------------------------------------------------
@dataclass
class ServerSlo:
    name: str
    facets: dict | None
    runs: list[Run] = field(default_factory=list)          # open-loop runs, by offered rate
    closed_loop_rps: float | None = None
    closed_loop_source: str | None = None

    @property
    def points(self) -> list[rules.Point]:
        return [rules.point_of(r.record) for r in self.runs]

    def capacity(self, objective_ms: float) -> rules.Capacity:
        return rules.capacity(self.points, objective_ms)

    def p99_ms_at_lowest(self) -> float | None:
        point = min(self.points, key=lambda p: p.offered_rps, default=None)
        return point.p99_ms if point else None


@dataclass
class Study:
    path: Path
    objective_ms: float
    servers: dict[str, ServerSlo]
    env: dict
    generator: dict


def load_study(folder: str | Path) -> Study:
    results = load_results(folder)
    env = results.env or {}
    slo_env = env.get("slo") or {}
    objective = float(slo_env.get("objective_ms") or rules.OBJECTIVE_MS)
    servers: dict[str, ServerSlo] = {}
    for run in results.runs:
        if run.is_reference:
            continue
        facts = results.servers.get(run.server)
        entry = servers.setdefault(run.server, ServerSlo(run.server, facts.facets if facts else None))
        if run.scenario == SCENARIO:
            if run.record.get("offered_rps") is None:
                raise ResultsError(f"{run.source}: an slo record without offered_rps")
            entry.runs.append(run)
        elif run.valid and run.record.get("slo_role") == "closed-loop maximum":
            entry.closed_loop_rps = run.goodput_rps
            entry.closed_loop_source = "wrk run in this folder"
    for entry in servers.values():
        entry.runs.sort(key=lambda r: r.record["offered_rps"])
        if entry.closed_loop_rps is None and entry.runs:
            entry.closed_loop_rps = entry.runs[0].record.get("closed_loop_max_rps")
            entry.closed_loop_source = entry.runs[0].record.get("closed_loop_source")
    servers = {k: v for k, v in servers.items() if v.runs}
    if not servers:
        raise ResultsError(f"{results.path}: no open-loop (scenario `slo`) runs; is this a folder "
                           f"of `make bench-slo`?")
    return Study(results.path, objective, servers, env, slo_env.get("generator") or {})


# -- computing ------------------------------------------------------------------------------------------
def objectives(study: Study) -> list[float]:
    return sorted({study.objective_ms, *rules.REPORTED_OBJECTIVES_MS})


@dataclass(frozen=True)
class Pair:
    fast: str            # the one with the higher capacity at the objective
    slow: str
    what: str            # what the pair differs in
    capacity_ratio: float | None
    closed_ratio: float | None
    sentence: str


def chosen_pairs(study: Study) -> list[tuple[str, str, str]]:
    """(a, b, what) by facets: pairs that differ only in language (the server layer), and each
    per-request Rust model server against each per-request Python ONNX Runtime server."""
    names = sorted(study.servers)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            fa, fb = study.servers[a].facets, study.servers[b].facets
            if not fa or not fb:
                continue
            if isolated_facet(fa, fb) == "language":
                found.append((a, b, "language only (the server layer)"))
                continue
            langs = {fa["language"]: fa, fb["language"]: fb}
            if set(langs) == {"python", "rust"} and all(
                    f.get("variant") == PER_REQUEST and f.get("runtime") != NO_MODEL
                    for f in (fa, fb)) and langs["python"].get("runtime") == "onnxruntime":
                found.append((a, b, "differs in " + ", ".join(differing_facets(fa, fb))))
    return found


def pair(study: Study, a: str, b: str, what: str) -> Pair:
    sa, sb = study.servers[a], study.servers[b]
    ca, cb = sa.capacity(study.objective_ms), sb.capacity(study.objective_ms)
    if (cb.rps or 0) > (ca.rps or 0):
        sa, sb, ca, cb = sb, sa, cb, ca
    cap_ratio = ca.rps / cb.rps if ca.rps and cb.rps else None
    closed = (sa.closed_loop_rps / sb.closed_loop_rps
              if sa.closed_loop_rps and sb.closed_loop_rps else None)
    return Pair(sa.name, sb.name, what, cap_ratio, closed,
                why_sentence(study, sa, sb, ca, cb, cap_ratio, closed))


def why_sentence(study: Study, fast: ServerSlo, slow: ServerSlo, cf: rules.Capacity,
                 cs: rules.Capacity, cap_ratio: float | None, closed: float | None) -> str:
    """One sentence, from the measurements, on why the capacity ratio differs from the
    closed-loop ratio: how much of its closed-loop maximum each keeps under the objective, and
    each one's p99 at the lowest rate (the latency it starts from)."""
    objective = f"{study.objective_ms:g} ms"
    if cap_ratio is None or closed is None:
        missing = [s.name for s, c in ((fast, cf), (slow, cs)) if not c.rps]
        if not missing:
            return "The closed-loop maximum of one of them is missing, so no ratio can be given."
        who = " and ".join(missing)
        return (f"{who} {'has' if len(missing) == 1 else 'have'} no capacity at p99 <= "
                f"{objective} among the rates measured (the lowest rate already misses the "
                f"objective), so no ratio can be given.")
    share_f = cf.rps / fast.closed_loop_rps
    share_s = cs.rps / slow.closed_loop_rps
    low_f, low_s = fast.p99_ms_at_lowest(), slow.p99_ms_at_lowest()
    start = (f" (p99 at the lowest rate measured: {slow.name} {low_s:.1f} ms, {fast.name} "
             f"{low_f:.1f} ms)" if low_f is not None and low_s is not None else "")
    if abs(cap_ratio / closed - 1) < 0.05:
        return (f"The two ratios agree within 5% ({cap_ratio:.2f}x against {closed:.2f}x): both "
                f"servers keep p99 <= {objective} up to a similar share of their closed-loop "
                f"maximum ({share_f:.0%} and {share_s:.0%}).")
    wider = cap_ratio > closed
    return (f"The capacity ratio ({cap_ratio:.2f}x) is {'wider' if wider else 'narrower'} than the "
            f"closed-loop ratio ({closed:.2f}x) because {fast.name} keeps p99 <= {objective} up to "
            f"{share_f:.0%} of its closed-loop maximum and {slow.name} up to {share_s:.0%}{start}: "
            f"a closed loop measures throughput at any latency, the objective counts only the "
            f"rate served within it.")


# -- formatting ----------------------------------------------------------------------------------------
def _ms(us: float | None) -> str:
    if us is None:
        return "n/a"
    ms = us / 1000.0
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def capacity_cell(cap: rules.Capacity) -> str:
    text = cap.describe()
    if cap.bracketed:
        text += f" (fails at {cap.lowest_failing:,.0f})"
    if cap.non_monotone:
        text += " *"
    return text


def capacity_table(study: Study) -> list[str]:
    objs = objectives(study)
    head = ("| server | closed-loop max (req/s) | " +
            " | ".join(f"capacity at p99 <= {o:g} ms (req/s)" for o in objs) +
            f" | share of closed-loop max at {study.objective_ms:g} ms | servers for "
            f"{TARGET_RPS:,} req/s |")
    lines = [head, "|---|---|" + "---|" * len(objs) + "---|---|"]
    for name, s in sorted(study.servers.items(),
                          key=lambda kv: -(kv[1].capacity(study.objective_ms).rps or 0)):
        caps = [s.capacity(o) for o in objs]
        main = s.capacity(study.objective_ms)
        share = (f"{main.rps / s.closed_loop_rps:.0%}" if main.rps and s.closed_loop_rps
                 else "n/a")
        needed = rules.servers_needed(TARGET_RPS, main.rps)
        needed_text = "n/a" if needed is None else (f"<= {needed}" if main.bound == "at least"
                                                    else str(needed))
        lines.append(f"| {name} | {_num(s.closed_loop_rps)} | " +
                     " | ".join(capacity_cell(c) for c in caps) + f" | {share} | {needed_text} |")
    return lines


def runs_table(study: Study) -> list[str]:
    lines = ["| server | step | offered (req/s) | share | achieved (req/s) | goodput (req/s) | p50 (ms) | "
             "p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | errors | unanswered | server CPU us/req (cores) | "
             "db cores | generator CPU us/req (cores) | s | passes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in sorted(study.servers.items()):
        for run in s.runs:
            r, c = run.record, run.record["client"]
            lat = c.get("latency_us") or {}
            res = r.get("resources") or {}
            server, db, load = res.get("server") or {}, res.get("db") or {}, res.get("load") or {}
            passes = ", ".join(f"{k} ms" for k, v in (r.get("objectives") or {}).items() if v) or "none"
            errors = c.get("non2xx", 0) + sum(v for k, v in c["errors"].items()
                                              if k not in ("status", "timeout"))
            share = r.get("offered_share")
            lines.append(
                f"| {name} | {r.get('rate_step', '')} | {r['offered_rps']:,.0f} | "
                f"{'' if share is None else f'{share:.0%}'} | {_num(r.get('achieved_rps'))} | "
                f"{_num(c.get('goodput_rps'))} | {_ms(lat.get('p50'))} | {_ms(lat.get('p90'))} | "
                f"{_ms(lat.get('p99'))} | {_ms(lat.get('p99.9'))} | {_ms(lat.get('max'))} | "
                f"{errors} | {c.get('not_completed', 0)} | "
                f"{_num(server.get('cpu_us_per_req'))} ({_num(server.get('cores_used'), '.2f')}) | "
                f"{_num(db.get('cores_used'), '.2f')} | {_num(load.get('cpu_us_per_req'))} "
                f"({_num(load.get('cores_used'), '.2f')}) | {r.get('duration_s', 0):g} | {passes} |")
    return lines


def latency_figure(study: Study) -> Figure:
    names = sorted(study.servers)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        s = study.servers[name]
        colour = PALETTE[i % len(PALETTE)]
        x = [r.record["offered_rps"] for r in s.runs]
        for key, style, label in (("p99", "-", "p99"), ("p50", "--", "p50")):
            y = [((r.record["client"].get("latency_us") or {}).get(key) or float("nan")) / 1000
                 for r in s.runs]
            ax.plot(x, y, style, color=colour, label=label, linewidth=1.4)
            kept = [rules.point_of(r.record).achieved_rps >=
                    (1 - rules.ACHIEVED_TOLERANCE) * r.record["offered_rps"] for r in s.runs]
            ax.scatter([a for a, k in zip(x, kept) if k], [b for b, k in zip(y, kept) if k],
                       color=colour, s=14, zorder=3)
            ax.scatter([a for a, k in zip(x, kept) if not k], [b for b, k in zip(y, kept) if not k],
                       facecolors="none", edgecolors=colour, s=22, zorder=3)
        ax.axhline(study.objective_ms, color="black", linewidth=0.8, linestyle=":",
                   label=f"objective {study.objective_ms:g} ms")
        cap = s.capacity(study.objective_ms)
        if cap.rps:
            ax.axvline(cap.rps, color="grey", linewidth=0.8, linestyle="-.",
                       label=f"capacity {cap.describe()}/s")
        if s.closed_loop_rps:
            ax.axvline(s.closed_loop_rps, color="grey", linewidth=0.6, alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("offered load (req/s)", fontsize=8)
        ax.set_ylabel("latency (ms, log)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6, loc="upper left")
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("Latency against offered load (open loop; hollow: achieved < 99% of offered; "
                 "grey line: closed-loop maximum)", fontsize=9)
    return fig


def tool_text(gen: dict) -> str:
    tool, version = gen.get("tool", "oha"), gen.get("version") or ""
    return version if version.startswith(tool) else f"{tool} {version}".strip()


def write_report(study: Study) -> Path:
    fig_path = study.path / "slo_latency.png"
    latency_figure(study).savefig(fig_path, dpi=DPI)
    gen = study.generator
    limit = (gen.get("limit") or {}).get("max_rps") if gen else None
    warned = sorted({w for s in study.servers.values() for r in s.runs
                     for w in r.record.get("warnings", []) if "own measured limit" in w})
    lines = [f"# Capacity under a latency objective: {study.path.name}", "",
             f"Open-loop load ({tool_text(gen)}, "
             f"{gen.get('connections', '?')} connections, {gen.get('threads', '?')} thread(s)): "
             f"requests scheduled at a fixed rate from the start of each run, whatever the server "
             f"answers; latency counted from each request's scheduled start. Rates are shares of "
             f"each server's closed-loop maximum (wrk, the same requests). A rate passes the "
             f"objective when every scheduled request got a 2xx answer, the achieved rate is within "
             f"{rules.ACHIEVED_TOLERANCE:.0%} of the offered one and p99 <= the objective; the "
             f"capacity is the highest passing rate with every lower measured rate passing "
             f"(rankbench/slo.py). Objective: p99 <= {study.objective_ms:g} ms (SLO_P99_MS).", ""]
    if limit:
        lines += [f"The generator's own limit on this machine: {limit:,} req/s against a trivial "
                  f"server (bench.loadgen_compare); rates above "
                  f"{rules.GENERATOR_LIMIT_SHARE:.0%} of it are flagged in the records"
                  + (f" ({len(warned)} warning(s) below)." if warned else ", and none was."), ""]
    lines += ["## Capacity", ""] + capacity_table(study) + [
        "", "`>=`: every measured rate passed (the capacity is at least that); `<`: even the "
        "lowest failed; `*`: a higher rate passed after a failure (noise), not counted.", "",
        "## Ratios", ""]
    pairs = [pair(study, a, b, what) for a, b, what in chosen_pairs(study)]
    if not pairs:
        lines.append("No pair of the servers measured differs only in language or is a Rust "
                     "model server against a Python ONNX Runtime one.")
    else:
        lines += ["| faster | slower | the pair | capacity ratio at "
                  f"{study.objective_ms:g} ms | closed-loop ratio |", "|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p.fast} | {p.slow} | {p.what} | {_ratio(p.capacity_ratio)} | "
                         f"{_ratio(p.closed_ratio)} |")
        lines.append("")
        for p in pairs:
            lines.append(f"- {p.fast} / {p.slow}: {p.sentence}")
    lines += ["", "## Latency against offered load", "", "![latency](slo_latency.png)", "",
              "## Every run", ""] + runs_table(study)
    if warned:
        lines += ["", "## Generator warnings", ""] + [f"- {w}" for w in warned]
    out = study.path / "slo.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.slo_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="a folder written by `make bench-slo`")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.results_dir)
    except ResultsError as exc:
        print(f"slo_report: {exc}", file=sys.stderr)
        return 2
    print(write_report(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
