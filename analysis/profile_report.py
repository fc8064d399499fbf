"""`python -m analysis.profile_report RESULTS`: profile.md and its figure from a profiling run
(results/<stamp>-profile/, written by `python -m bench.profile`).

The report shows, per configuration (items, concurrency): how much of each server's sampled CPU the
rules name; a stacked bar per server of CPU microseconds per request by category; the table of
categories; the differences Python minus Rust by category for pairs chosen from the registry's
facets (the floors: both without a model, other language; the model servers: the same runtime
first); what the largest categories are made of (top frames); the profilers' overhead; the
user/system CPU split of every process group; links to the flame graphs.

Loading, aggregating and formatting are separate sections; the figure uses matplotlib's object
API (no pyplot), as analysis/figures.py does.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from rankbench.servers import differing_facets, isolated_facet

SUPPORTED_SCHEMAS = (1,)
CATEGORY_ORDER = ("kernel", "interpreter", "event_loop", "http", "json", "validation",
                  "db_driver", "pool", "tensor", "model", "allocator", "timers_stats", "other")
CATEGORY_COLOURS = {
    "kernel": "#4e79a7", "interpreter": "#e15759", "event_loop": "#f28e2b", "http": "#76b7b2",
    "json": "#59a14f", "validation": "#edc948", "db_driver": "#b07aa1", "pool": "#ff9da7",
    "tensor": "#9c755f", "model": "#2f4b7c", "allocator": "#bab0ac", "timers_stats": "#a0cbe8",
    "other": "#d3d3d3",
}
NAMED_TARGET = 0.90
DPI = 100


class ReportError(RuntimeError):
    """A results folder that cannot be reported; the message is one line."""


# -- loading ----------------------------------------------------------------------------------------
@dataclass
class ProfileRun:
    env: dict
    records: list[dict]
    path: Path


def load(folder: Path) -> ProfileRun:
    env_path, records_path = folder / "env.json", folder / "profile.jsonl"
    if not env_path.exists() or not records_path.exists():
        raise ReportError(f"{folder} has no env.json and profile.jsonl (is it a "
                          f"`python -m bench.profile` results folder?)")
    env = json.loads(env_path.read_text())
    if env.get("kind") != "profile":
        raise ReportError(f"{env_path} is not a profiling run's (kind {env.get('kind')!r})")
    records = []
    for number, line in enumerate(records_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("schema") not in SUPPORTED_SCHEMAS:
            raise ReportError(f"{records_path}:{number}: schema {record.get('schema')!r} is not "
                              f"one this report reads ({', '.join(map(str, SUPPORTED_SCHEMAS))})")
        records.append(record)
    if not records:
        raise ReportError(f"{records_path} holds no record")
    return ProfileRun(env, records, folder)


# -- aggregating ------------------------------------------------------------------------------------
@dataclass
class ServerProfile:
    """One server in one configuration, averaged over its repeats."""
    name: str
    facets: dict
    records: list[dict] = field(default_factory=list)

    def _mean(self, get) -> float | None:
        values = [v for v in (get(r) for r in self.records) if v is not None]
        return mean(values) if values else None

    def us(self, category: str) -> float | None:
        return self._mean(lambda r: r["profile"]["categories"][category]["cpu_us_per_req"])

    def share(self, category: str) -> float:
        return self._mean(lambda r: r["profile"]["categories"][category]["share"]) or 0.0

    def estimated(self, category: str) -> float:
        return self._mean(lambda r: r["profile"]["categories"][category]["estimated_share"]) or 0.0

    @property
    def named_share(self) -> float:
        return self._mean(lambda r: r["profile"]["named_share"]) or 0.0

    @property
    def cpu_us(self) -> float | None:
        """Server CPU per request the categories divide: the unprofiled window's."""
        return self._mean(
            lambda r: r["windows"]["unprofiled"]["resources"]["server"]["cpu_us_per_req"])

    def window(self, which: str, get) -> float | None:
        return self._mean(lambda r: get(r["windows"][which]) if which in r["windows"] else None)

    def top(self, category: str) -> list[tuple[str, float]]:
        """Top frames of a category, shares merged over repeats."""
        merged: dict[str, float] = {}
        for r in self.records:
            for label, share in r["profile"]["categories"][category]["top"]:
                merged[label] = merged.get(label, 0.0) + share / len(self.records)
        return sorted(merged.items(), key=lambda kv: -kv[1])


def configurations(run: ProfileRun) -> dict[tuple[int, int], dict[str, ServerProfile]]:
    """(items, concurrency) -> server -> its profile, servers in the order they first ran."""
    configs: dict[tuple[int, int], dict[str, ServerProfile]] = {}
    for record in run.records:
        key = (record["items"], record["concurrency"])
        servers = configs.setdefault(key, {})
        profile = servers.setdefault(record["server"],
                                     ServerProfile(record["server"], _facets(run, record)))
        profile.records.append(record)
    return configs


def _facets(run: ProfileRun, record: dict) -> dict:
    facets = dict(run.env.get("servers", {}).get(record["server"], {}))
    facets.update(record.get("facets", {}), name=record["server"], role=record.get("role"))
    return facets


@dataclass(frozen=True)
class Pair:
    python: str       # the server with an interpreter
    native: str
    kind: str         # "floor" or "model"
    isolates: str     # what the pair differs in

    @property
    def title(self) -> str:
        return f"{self.python} − {self.native}"


def pairs(servers: dict[str, ServerProfile]) -> list[Pair]:
    """Interpreted minus native pairs, chosen by facets: the floors (both without a model, same
    variant), then model servers of the same variant, the pair that shares its runtime first."""
    found = []
    for a in servers.values():
        for b in servers.values():
            fa, fb = a.facets, b.facets
            if not fa.get("interpreter") or fb.get("interpreter") or fa.get("role") != fb.get("role"):
                continue
            if fa.get("language") == fb.get("language") or fa.get("variant") != fb.get("variant"):
                continue
            if fa.get("role") == "floor" and fa.get("runtime") != fb.get("runtime"):
                continue
            single = isolated_facet(fa, fb)
            isolates = single or " and ".join(f for f in differing_facets(fa, fb)
                                              if f in ("language", "runtime"))
            found.append((fa.get("role") != "floor", single is None, a.name, b.name,
                          Pair(a.name, b.name, fa.get("role") or "?", isolates)))
    return [p[-1] for p in sorted(found)]


def difference(pair: Pair, servers: dict[str, ServerProfile], category: str) -> float | None:
    a, b = servers[pair.python].us(category), servers[pair.native].us(category)
    return None if a is None or b is None else a - b


# -- formatting ---------------------------------------------------------------------------------------
def _us(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"


def _signed(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = _us(abs(value))
    return f"+{text}" if value > 0.05 else (f"−{text}" if value < -0.05 else "0")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}" if abs(value) >= 0.1 else f"{value:.1%}"


def _table(header: list[str], rows: list[list[str]], align_first_left: bool = True) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---" if align_first_left else "---:"] +
                            ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def labels(run: ProfileRun) -> dict[str, str]:
    for record in run.records:
        return {k: v["label"] for k, v in record["profile"]["categories"].items()}
    return {}


def figure(servers: dict[str, ServerProfile], config: tuple[int, int], path: Path,
           names: dict[str, str]) -> Path:
    from matplotlib.figure import Figure

    order = list(servers)
    fig = Figure(figsize=(9, 0.55 * len(order) + 1.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    left = [0.0] * len(order)
    for category in CATEGORY_ORDER:
        values = [servers[n].us(category) or 0.0 for n in order]
        if not any(values):
            continue
        ax.barh(order, values, left=left, color=CATEGORY_COLOURS[category],
                label=names.get(category, category), edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("server CPU per request (µs), by category")
    ax.set_title(f"Where the server CPU goes (items={config[0]}, concurrency={config[1]})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=DPI)
    return path


def render(run: ProfileRun, figures: bool = True) -> str:
    env, names = run.env, labels(run)
    profiler = env.get("profiler", {})
    tools = env.get("tools", {})
    settings = env.get("settings", {})
    out = ["# Where the CPU goes: whole-process profiles", ""]
    out.append(f"Run {env.get('started_at', '?')} on {env.get('cpu_model', '?')} "
               f"({env.get('cores_usable', '?')} usable cores, kernel {env.get('kernel', '?')}); "
               f"workers {settings.get('workers_effective', '?')}, pool {settings.get('pool_size', '?')}, "
               f"{settings.get('duration_s', '?')} s per window after {settings.get('warmup_s', '?')} s "
               f"warm-up.")
    out.append("")
    out.append(f"perf `{profiler.get('perf_event', 'cpu-clock')}` every "
               f"{(profiler.get('perf_period_ns') or 0) / 1000:g} µs of each thread's CPU "
               f"(user and kernel), `--call-graph {profiler.get('call_graph', '?')}`; Python frames "
               f"named by py-spy `--native` at {profiler.get('pyspy_rate_hz', '?')} Hz in a window "
               f"of its own (CPython < 3.12) or by CPython's perf trampolines (3.12+). "
               f"Tools: {', '.join(f'{k} {v}' for k, v in tools.items() if v)}.")
    out.append("")
    out.append("Categories come from one table of rules (`bench/profiling/rules.py`); CPU per "
               "request of a category = its share of perf's samples x the server CPU per request "
               "that the harness's sampler measured in the unprofiled window of the same server "
               "process (taking samples costs the server CPU that no sample sees; the perf "
               "window's figure is in the overhead table). The method and its limits: "
               "docs/profiles.md in the repository.")
    out.append("")
    for config, servers in configurations(run).items():
        slug = f"i{config[0]}_c{config[1]}"
        out += [f"## items={config[0]}, concurrency={config[1]}", ""]
        out += _coverage(servers)
        if figures:
            path = figure(servers, config, run.path / f"profile_categories_{slug}.png", names)
            out += [f"![CPU per request by category]({path.name})", ""]
        out += _categories(servers, names)
        out += _differences(servers, names)
        out += _inside(servers, names)
        out += _overhead(servers)
        out += _user_system(servers)
        out += _flames(servers)
    warnings = [(r["server"], w) for r in run.records for w in r.get("warnings", [])]
    if warnings:
        out += ["## Warnings", ""]
        out += [f"- {server}: {w}" for server, w in warnings]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _coverage(servers: dict[str, ServerProfile]) -> list[str]:
    rows = []
    for s in servers.values():
        est = sum(s.estimated(c) * s.share(c) for c in CATEGORY_ORDER)
        r = s.records[0]
        verdict = "yes" if s.named_share >= NAMED_TARGET else "**no**"
        spied = sum((x["profile"].get("pyspy") or {}).get("running_python", 0) for x in s.records)
        rows.append([s.name, r.get("python_frames", "?"),
                     str(sum(x["profile"]["samples"] for x in s.records)),
                     str(spied) if r.get("python_frames") == "py-spy" else "-",
                     _pct(s._mean(lambda x: x["profile"].get("sampled_vs_measured_cpu"))),
                     f"{s.named_share:.1%}", verdict, _pct(est)])
    return (["### Coverage", "",
             f"Share of sampled server CPU that the rules name (target {NAMED_TARGET:.0%}); "
             "`sampled/measured`: perf's sampled CPU over the sampler's; `via py-spy`: share of "
             "the CPU whose category rests on py-spy's proportions (Python code that perf sees "
             "as the eval loop), from `py-spy samples` samples of running Python code (the fewer, "
             "the rougher the split).", ""] +
            _table(["server", "Python names", "perf samples", "py-spy samples", "sampled/measured",
                    "named",
                    f">= {NAMED_TARGET:.0%}", "via py-spy"], rows) + [""])


def _categories(servers: dict[str, ServerProfile], names: dict[str, str]) -> list[str]:
    order = list(servers)
    rows = []
    for category in CATEGORY_ORDER:
        values = [servers[n].us(category) for n in order]
        if not any(values):
            continue
        rows.append([names.get(category, category)] +
                    [f"{_us(servers[n].us(category))} ({_pct(servers[n].share(category))})"
                     for n in order])
    rows.append(["**server CPU per request**"] + [f"**{_us(servers[n].cpu_us)}**" for n in order])
    return (["### CPU per request by category (µs, share)", ""] +
            _table(["category"] + order, rows) + [""])


def _differences(servers: dict[str, ServerProfile], names: dict[str, str]) -> list[str]:
    chosen = pairs(servers)
    if not chosen:
        return []
    rows = []
    for category in CATEGORY_ORDER:
        diffs = [difference(p, servers, category) for p in chosen]
        if all(d is None or abs(d) < 0.05 for d in diffs):
            continue
        rows.append([names.get(category, category)] + [_signed(d) for d in diffs])
    totals = [None if servers[p.python].cpu_us is None or servers[p.native].cpu_us is None
              else servers[p.python].cpu_us - servers[p.native].cpu_us for p in chosen]
    rows.append(["**total**"] + [f"**{_signed(t)}**" for t in totals])
    out = ["### Python minus Rust, by category (µs per request)", "",
           "Pairs from the registry's facets: " +
           "; ".join(f"{p.title} ({p.kind}s; differ in {p.isolates})" for p in chosen) + ".", ""]
    out += _table(["category"] + [p.title for p in chosen], rows) + [""]
    floor = next((p for p in chosen if p.kind == "floor"), None)
    if floor is not None:
        ranked = sorted(((difference(floor, servers, c) or 0.0, c) for c in CATEGORY_ORDER),
                        reverse=True)
        top = [f"{names.get(c, c)} {_signed(d)} µs" for d, c in ranked[:4] if d > 0]
        if top:
            out += [f"Largest Python-only categories in the floor ({floor.title}): " +
                    ", ".join(top) + ".", ""]
    return out


def _inside(servers: dict[str, ServerProfile], names: dict[str, str]) -> list[str]:
    out = ["### What the largest categories are made of", "",
           "Per server, its five largest categories and their top frames (share of the "
           "category); kernel samples are named by their syscall.", ""]
    for s in servers.values():
        ranked = sorted(CATEGORY_ORDER, key=lambda c: -s.share(c))[:5]
        parts = []
        for category in ranked:
            if s.share(category) <= 0:
                continue
            frames = ", ".join(f"`{label[:70]}` {share:.0%}" for label, share in s.top(category)[:3])
            parts.append(f"{names.get(category, category)} {_pct(s.share(category))}: {frames}")
        out.append(f"- **{s.name}**: " + "; ".join(parts))
    return out + [""]


def _overhead(servers: dict[str, ServerProfile]) -> list[str]:
    rows = []
    for s in servers.values():
        rps0 = s.window("unprofiled", lambda w: w["client"]["rps"])
        rps1 = s.window("perf", lambda w: w["client"]["rps"])
        rps2 = s.window("py-spy", lambda w: w["client"]["rps"])
        cpu0 = s.window("unprofiled", lambda w: w["resources"]["server"]["cpu_us_per_req"])
        cpu1 = s.window("perf", lambda w: w["resources"]["server"]["cpu_us_per_req"])
        perf_cores = s.window("perf", lambda w: (w["profilers"].get("perf") or {}).get("cpu_s"))
        duration = s.window("perf", lambda w: w["client"]["duration_s"])
        rows.append([s.name, _us(rps0), f"{_us(rps1)} ({_change(rps1, rps0)})",
                     f"{_us(rps2)} ({_change(rps2, rps0)})" if rps2 is not None else "-",
                     _us(cpu0), f"{_us(cpu1)} ({_change(cpu1, cpu0)})",
                     f"{perf_cores / duration:.2f}" if perf_cores and duration else "n/a"])
    return (["### The profilers' overhead (same server process, windows one after the other)", "",
             "The categories come from the perf window; py-spy runs in a window of its own "
             "because each of its samples stops the process.", ""] +
            _table(["server", "req/s unprofiled", "req/s under perf", "req/s under py-spy",
                    "server µs/req unprofiled", "under perf", "perf's own cores"], rows) + [""])


def _change(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "n/a"
    return f"{value / base - 1:+.0%}"


def _user_system(servers: dict[str, ServerProfile]) -> list[str]:
    rows = []
    for s in servers.values():
        cells = [s.name]
        for group in ("server", "db", "load"):
            user = s.window("unprofiled", lambda w: (w["resources"].get(group) or {}).get("user_s"))
            system = s.window("unprofiled",
                              lambda w: (w["resources"].get(group) or {}).get("system_s"))
            per_req = s.window("unprofiled",
                               lambda w: (w["resources"].get(group) or {}).get("cpu_us_per_req"))
            if user is None or system is None or not (user + system):
                cells.append("n/a")
            else:
                cells.append(f"{_us(per_req)} µs/req, {user / (user + system):.0%} user / "
                             f"{system / (user + system):.0%} system")
        rows.append(cells)
    return (["### User and system CPU of each process group (unprofiled window)", ""] +
            _table(["server", "server processes", "postgres backends", "wrk"], rows) + [""])


def _flames(servers: dict[str, ServerProfile]) -> list[str]:
    out = ["### Flame graphs", ""]
    for s in servers.values():
        for r in s.records:
            links = r.get("flamegraphs", {})
            shown = []
            for key, text in (("perf_svg", "perf (kernel + user)"),
                              ("python_svg", "py-spy (Python names)"),
                              ("perf_folded", "perf folded"), ("python_folded", "py-spy folded")):
                if key in links:
                    shown.append(f"[{text}]({links[key]})")
            out.append(f"- {s.name} (repeat {r['repeat'] + 1}): " + ", ".join(shown))
    return out + [""]


# -- command line -----------------------------------------------------------------------------------
def write(folder: Path) -> Path:
    run = load(folder)
    path = folder / "profile.md"
    path.write_text(render(run))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.profile_report",
                                     description="write profile.md for a profiling run")
    parser.add_argument("results", type=Path, help="a results/<stamp>-profile folder")
    args = parser.parse_args(argv)
    try:
        path = write(args.results)
    except (ReportError, OSError, ValueError, KeyError) as exc:
        print(f"profile_report: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
