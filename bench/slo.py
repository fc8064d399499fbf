"""`python -m bench.slo` (make bench-slo): latency at fixed arrival rates, and each server's capacity
under a p99 objective.

For every server: its closed-loop maximum first (a short wrk run, recorded like any bench run, or
the median goodput of a given results folder: `--from results/<stamp>`), then open-loop runs
(bench/openloop.py) at 10, 25, 50, 70, 80, 90, 100 and 110% of that maximum, interleaved (each
share runs every server, in an order rotated per share), then up to `--refine` runs per server
that bisect between the highest passing and the lowest failing rate (rankbench/slo.py holds the
rules). Each open-loop run is a bench run (bench.runner.Bench: server from the registry, /health,
warm-up, /stats/reset, measured window with the sampler on the server and its database backends,
/stats, stop) whose load is oha at a fixed rate, warmed up at that same rate. Run length: enough
requests for about 100 above the p99 (rankbench.slo.duration_s: 10,000 requests, 10 to 60 s).

Records join runs.jsonl in a results folder of its own (schema 2; `scenario: "slo"`, the keys are
listed in SLO_KEYS), then analysis/slo_report.py writes slo.md and the figures.

The generator's own limit (its highest sustained rate against a trivial server, measured by
bench.loadgen_compare) is read from .bench/loadgen_limit.json or measured first (about 40 s), stated
in env.json and in every record, and a record warns when its offered rate approaches it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rankbench import config, slo as rules

from bench import loadgen_compare, openloop, plan, records
from bench.cli import resolve_or_exit, run_study
from bench.results import ResultsFolder, utc
from bench.runner import Bench, MeasuredLoad
from bench.serverproc import HOST, BenchError, RunningServer
from bench.settings import Settings, SettingsError, resolve

SCENARIO = "slo"
CLOSED_LOOP_SCENARIO = "rank"

SLO_KEYS = {
    "offered_rps": "the rate oha scheduled requests at (requests/s from the run's start)",
    "offered_share": "offered_rps / closed_loop_max_rps",
    "rate_step": "`ladder` (a share of the maximum) or `refine` (a bisection run)",
    "achieved_rps": "completed responses per second of the sending window (client.rps)",
    "closed_loop_max_rps": "the server's closed-loop goodput the ladder is a share of",
    "closed_loop_source": "where that maximum comes from (a wrk run in this folder, or a folder)",
    "objectives": "{objective_ms: passes} for SLO_P99_MS and 10/25/50 ms (rankbench.slo rule)",
    "generator": "tool, version, connections, threads, and its measured limit (max_rps)",
    "client.offered_rps, client.scheduled, client.not_completed, client.status_counts, "
    "client.latency_from, client.mode, client.timeout_s": "the open-loop client (bench.openloop)",
}


@dataclass(frozen=True)
class SloSettings:
    objective_ms: float = rules.OBJECTIVE_MS
    shares: tuple[float, ...] = rules.LADDER_SHARES
    refine: int = rules.REFINE_RUNS
    connections: int = openloop.CONNECTIONS
    threads: int = openloop.THREADS
    duration_s: int | None = None          # None: rankbench.slo.duration_s(rate)
    closed_loop_from: Path | None = None
    measure_limit: bool = False            # measure the generator's limit even if one is recorded
    limit_file: Path = loadgen_compare.LIMIT_FILE

    def as_json(self) -> dict:
        return {"objective_ms": self.objective_ms, "shares": list(self.shares),
                "refine": self.refine, "connections": self.connections, "threads": self.threads,
                "duration_s": self.duration_s or "rankbench.slo.duration_s(rate)",
                "closed_loop_from": str(self.closed_loop_from) if self.closed_loop_from else None,
                "min_requests": rules.MIN_REQUESTS, "min_duration_s": rules.MIN_DURATION_S,
                "max_duration_s": rules.MAX_DURATION_S,
                "achieved_tolerance": rules.ACHIEVED_TOLERANCE}


class OpenLoopBench(Bench):
    """The bench's harness with an open-loop load for `slo` runs (wrk for every other run)."""

    def __init__(self, settings: Settings, slo: SloSettings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.slo = slo
        self.rate: float = 0.0
        self.seconds: int = 0
        self.bodies: Path | None = None
        self.oha: Path | None = None

    def warm_up(self, server: RunningServer, run: plan.Run, tag: str) -> dict:
        if run.scenario != SCENARIO:
            return super().warm_up(server, run, tag)
        warm = self.open_loop(server, self.settings.warmup_s, tag + ".warmup", keep_csv=False)
        return {k: v for k, v in warm.client["errors"].items() if v}

    def measured_load(self, server: RunningServer, run: plan.Run, tag: str) -> MeasuredLoad:
        if run.scenario != SCENARIO:
            return super().measured_load(server, run, tag)
        return self.open_loop(server, self.seconds, tag)

    def open_loop(self, server: RunningServer, seconds: int, tag: str,
                  keep_csv: bool = False) -> MeasuredLoad:
        logs = self.folder.logs
        csv_path, log = logs / f"{tag}.oha.csv", logs / f"{tag}.oha.txt"
        argv = self.pin.prefix("other") + openloop.command(
            self.oha, f"http://{HOST}:{server.port}/rank", rate=self.rate,
            duration_s=seconds, connections=self.slo.connections, timeout_s=openloop.TIMEOUT_S,
            bodies=self.bodies, output=csv_path, threads=self.slo.threads)
        started = time.monotonic()
        proc = self.supervisor.start(argv, openloop.TOOL, log, log)
        window = openloop.watch_window(proc.pid, started, seconds)
        try:
            usage = self.supervisor.wait_measured(proc, timeout_s=seconds + openloop.TIMEOUT_S + 120)
        except TimeoutError as exc:
            raise BenchError(str(exc), server.name, "slo: load", log) from None
        if proc.returncode != 0:
            raise BenchError(f"oha exited with code {proc.returncode}", server.name, "slo: load", log)
        try:
            hist, statuses, total_bytes, _ = openloop.parse_csv(csv_path)
        except (OSError, ValueError) as exc:
            raise BenchError(f"oha's output: {exc}", server.name, "slo: load", log) from None
        if not keep_csv:
            csv_path.unlink(missing_ok=True)  # the histogram keeps what the analysis reads
        client = openloop.client_record(
            rate=self.rate, duration_s=seconds, connections=self.slo.connections,
            timeout_s=openloop.TIMEOUT_S, hist=hist, statuses=statuses, total_bytes=total_bytes,
            threads=self.slo.threads)
        cpu = window.cpu_s
        return MeasuredLoad(
            client=client, usage=usage, log=log, cpu_s=cpu if cpu is not None else usage.cpu_s,
            measured=("oha /proc CPU over its sending window" if cpu is not None
                      else "wait4 (whole process)"),
            threads=self.slo.threads, tool=openloop.TOOL)


# -- the study --------------------------------------------------------------------------------------
class SloStudy:
    def __init__(self, settings: Settings, slo: SloSettings, registry=None, out=sys.stdout,
                 dry_run: bool = False) -> None:
        self.settings = settings
        self.slo = slo
        self.bench = OpenLoopBench(settings, slo, registry=registry, out=out, dry_run=dry_run)
        self.dry_run = dry_run
        self.limit: dict | None = None
        self.runs = 0

    def say(self, text: str) -> None:
        self.bench.say(text)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.bench.cleanup()

    def _run(self) -> int:
        b, s = self.bench, self.settings
        servers, skipped = b.check()
        try:
            b.oha = openloop.require()
            if s.scenario != CLOSED_LOOP_SCENARIO:
                raise openloop.OpenLoopError("the open-loop study sends the rank scenario only")
        except openloop.OpenLoopError as exc:
            raise BenchError(str(exc), phase="checks") from None
        closed = self.closed_loop_from_folder(servers) if self.slo.closed_loop_from else {}
        shares = ", ".join(f"{x:.0%}" for x in self.slo.shares)
        self.say(f"[slo] plan: {', '.join(servers)}; closed-loop maximum "
                 f"{'from ' + str(self.slo.closed_loop_from) if closed else 'from a wrk run'} "
                 f"(items {s.items[0]}, c={s.concurrency[0]}), then offered {shares} of it, "
                 f"{s.warmup_s} s warm-up at the rate, {rules.MIN_REQUESTS:,} requests per run "
                 f"({rules.MIN_DURATION_S}-{rules.MAX_DURATION_S} s), up to {self.slo.refine} "
                 f"refining run(s) per server for p99 <= {self.slo.objective_ms:g} ms; "
                 f"{openloop.TOOL} -c {self.slo.connections} --worker-threads {self.slo.threads}")
        if self.dry_run:
            return 0

        b.folder = ResultsFolder(s.results_root)
        self.say(f"[slo] results: {b.folder.path}")
        self.limit = self.generator_limit()
        b.write_env(servers, skipped)
        b.env["slo"] = dict(self.slo.as_json(), generator={
            "tool": openloop.TOOL, "version": openloop.version(b.oha), "binary": str(b.oha),
            "connections": self.slo.connections, "threads": self.slo.threads,
            "limit": self.limit}, keys=SLO_KEYS)
        b.folder.write_json("env.json", b.env)
        b.calibrate()
        if s.verify:
            b.verify_all(servers)
        f = b.facts
        shape = openloop.RequestShape(items=s.items[0], top_k=s.top_k,
                                      users=(f.users.min, f.users.max),
                                      item_range=(f.items.min, f.items.max), seed=s.seed)
        try:
            b.bodies = openloop.write_bodies(b.folder.path / "openloop_bodies.txt",
                                             openloop.request_bodies(shape))
        except openloop.OpenLoopError as exc:
            raise BenchError(str(exc), phase="slo: requests") from None
        b.env["slo"]["requests"] = dict(shape.as_json(), file="openloop_bodies.txt",
                                        source="rankbench-ceiling --print-requests")
        b.folder.write_json("env.json", b.env)

        t0 = time.monotonic()
        maxima: dict[str, tuple[float, str]] = {}
        for position, name in enumerate(servers):
            if name in closed:
                maxima[name] = closed[name]
                continue
            run = plan.Run(self.runs, name, CLOSED_LOOP_SCENARIO, s.items[0], s.concurrency[0], 0,
                           position, tuple(servers))
            record = self.record(run, b.run_server(run), f"closed loop c={s.concurrency[0]}")
            record["slo_role"] = "closed-loop maximum"
            b.folder.append_record(record)
            maxima[name] = (record["client"]["goodput_rps"] or 0.0, "wrk run in this folder")
        points: dict[str, list[rules.Point]] = {name: [] for name in servers}
        steps = {name: 0 for name in servers}
        for i, share in enumerate(self.slo.shares):
            order = plan.rotated(servers, i)
            for position, name in enumerate(order):
                rate = max(1.0, round(share * maxima[name][0]))
                points[name].append(self.open_loop_run(name, rate, share, "ladder", steps[name],
                                                       position, order, maxima[name]))
                steps[name] += 1
        for name in servers:
            def measure(rate: float, name=name) -> rules.Point:
                steps[name] += 1
                return self.open_loop_run(name, rate, rate / maxima[name][0] if maxima[name][0]
                                          else None, "refine", steps[name] - 1, 0, (name,),
                                          maxima[name])
            points[name] = rules.refine(points[name], self.slo.objective_ms, self.slo.refine,
                                        measure)
        for name in servers:
            cap = rules.capacity(points[name], self.slo.objective_ms)
            self.say(f"[slo] {name}: capacity at p99 <= {self.slo.objective_ms:g} ms: "
                     f"{cap.describe()} req/s (closed-loop maximum {maxima[name][0]:,.0f})")
        b.env.update(finished_at=utc(), elapsed_s=round(time.monotonic() - t0, 1),
                     runs=self.runs, complete=True)
        b.folder.write_json("env.json", b.env)
        self.say(f"[slo] done: {self.runs} runs in {b.folder.path}")
        if s.report:
            self.report()
        return 0

    def open_loop_run(self, name: str, rate: float, share: float | None, step: str, index: int,
                      position: int, order: tuple[str, ...] | list[str],
                      maximum: tuple[float, str]) -> rules.Point:
        b, s = self.bench, self.settings
        b.rate = rate
        b.seconds = self.slo.duration_s or rules.duration_s(rate)
        run = plan.Run(self.runs, name, SCENARIO, s.items[0], self.slo.connections, index,
                       position, tuple(order))
        record = b.run_server(run)
        record["duration_s"] = float(b.seconds)
        record["seed"] = s.seed  # every rate sends the same pool (base_record adds the repeat)
        limit = (self.limit or {}).get("max_rps")
        warning = rules.generator_warning(rate, limit, openloop.TOOL)
        if warning:
            record["warnings"].append(warning)
        client = record["client"]
        point = rules.point_of(record)
        record.update(
            offered_rps=rate, offered_share=round(share, 4) if share is not None else None,
            rate_step=step, achieved_rps=client["rps"], closed_loop_max_rps=maximum[0],
            closed_loop_source=maximum[1],
            objectives={f"{o:g}": point.passes(o) for o in
                        sorted({self.slo.objective_ms, *rules.REPORTED_OBJECTIVES_MS})},
            generator={"tool": openloop.TOOL, "connections": self.slo.connections,
                       "threads": self.slo.threads, "limit_rps": limit})
        self.record(run, record, f"{step} {rate:,.0f} req/s" +
                    (f" ({share:.0%})" if share is not None else ""))
        b.folder.append_record(record)
        return point

    def record(self, run: plan.Run, record: dict, what: str) -> dict:
        self.runs += 1
        self.say(f"[{self.runs}] {run.server} {what}: {records.summary_line(record)}")
        return record

    def generator_limit(self) -> dict | None:
        facts = None if self.slo.measure_limit else loadgen_compare.read_limit(self.slo.limit_file)
        if facts is None:
            self.say(f"[slo] measuring {openloop.TOOL}'s own limit against a trivial server "
                     f"(once per machine and version; kept in {self.slo.limit_file})")
            try:
                facts = loadgen_compare.generator_limit(self.bench.supervisor, self.bench.folder.logs)
            except (loadgen_compare.CompareError, openloop.OpenLoopError) as exc:
                self.say(f"[slo] warning: the generator's limit was not measured ({exc})")
                return None
            if facts["max_rps"]:
                loadgen_compare.write_limit(facts, self.slo.limit_file)
        limit = facts.get("max_rps")
        tested = facts.get("tested_up_to")
        self.say(f"[slo] {openloop.TOOL}'s own limit: {limit:,} req/s against a trivial server"
                 f"{' (the highest rate tried)' if limit == tested else ''}; rates above "
                 f"{rules.GENERATOR_LIMIT_SHARE:.0%} of it are flagged" if limit else
                 f"[slo] {openloop.TOOL} sustained none of the rates tried")
        return facts

    def closed_loop_from_folder(self, servers: list[str]) -> dict[str, tuple[float, str]]:
        """Median goodput of the valid closed-loop runs of each server in another results folder
        (the settings' items; the settings' concurrency, else the concurrency where it is best)."""
        from analysis.load import ResultsError, load_results

        try:
            results = load_results(self.slo.closed_loop_from)
        except ResultsError as exc:
            raise BenchError(str(exc), phase="slo: closed-loop maximum") from None
        s = self.settings
        found = {}
        for name in servers:
            runs = [r for r in results.runs if r.server == name and r.valid
                    and r.scenario == CLOSED_LOOP_SCENARIO and r.candidates == s.items[0]]
            by_c: dict[int, list[float]] = {}
            for r in runs:
                by_c.setdefault(r.concurrency, []).append(r.goodput_rps)
            if not by_c:
                continue
            c = s.concurrency[0] if s.concurrency[0] in by_c else max(
                by_c, key=lambda k: statistics.median(by_c[k]))
            found[name] = (statistics.median(by_c[c]),
                           f"{results.path.name}: median of {len(by_c[c])} valid run(s), c={c}")
        return found

    def report(self) -> None:
        folder = self.bench.results_dir
        result = subprocess.run([sys.executable, "-m", "analysis.slo_report", str(folder)],
                                cwd=config.ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            self.say(f"[slo] report failed (exit {result.returncode}): "
                     f"{(result.stderr or result.stdout).strip()[-400:]}")
            return
        self.say(f"[slo] report: {folder / 'slo.md'}")


# -- command line -------------------------------------------------------------------------------------
SLO_ENV = {"SLO_P99_MS": "objective_ms", "SLO_SHARES": "shares", "SLO_REFINE": "refine",
           "SLO_CONNECTIONS": "connections", "SLO_THREADS": "threads",
           "SLO_DURATION": "duration_s", "SLO_FROM": "closed_loop_from"}


def _slo_value(key: str, raw: str, name: str):
    try:
        if key == "objective_ms":
            value = float(raw)
            if not value > 0:
                raise ValueError
            return value
        if key == "shares":
            shares = tuple(float(p) for p in raw.replace(",", " ").split())
            if not shares or any(not 0 < x <= 5 for x in shares):
                raise ValueError
            return shares
        if key == "closed_loop_from":
            return Path(raw).resolve()
        value = int(raw.rstrip("s"))
        if value < (0 if key == "refine" else 1):
            raise ValueError
        return value
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a valid value") from None


def resolve_slo(argv: list[str] | None, environ=None) -> tuple[Settings, SloSettings, argparse.Namespace]:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m bench.slo", add_help=False,
        description="Open-loop runs at shares of each server's closed-loop maximum, and its "
                    "capacity under a p99 objective. Every `python -m bench` flag also applies.")
    parser.add_argument("--objective-ms", dest="objective_ms", help="SLO_P99_MS (default 25)")
    parser.add_argument("--shares", help="SLO_SHARES, e.g. 0.1,0.5,1.0")
    parser.add_argument("--refine", help="SLO_REFINE: extra bisection runs per server (default 3)")
    parser.add_argument("--connections", help=f"SLO_CONNECTIONS: oha -c (default "
                                              f"{openloop.CONNECTIONS})")
    parser.add_argument("--threads", help="SLO_THREADS: oha --worker-threads (default 1)")
    parser.add_argument("--slo-duration", dest="duration_s",
                        help="SLO_DURATION: seconds per open-loop run (default: 10,000 requests, "
                             "10-60 s)")
    parser.add_argument("--from", dest="closed_loop_from",
                        help="SLO_FROM: take each server's closed-loop maximum from this results "
                             "folder instead of a wrk run")
    parser.add_argument("--measure-limit", action="store_true",
                        help="measure the generator's own limit even if one is recorded")
    parser.add_argument("--limit-file", type=Path, default=loadgen_compare.LIMIT_FILE,
                        help="where the generator's measured limit is kept (default "
                             ".bench/loadgen_limit.json)")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print()
        resolve(["--help"])
    changes = {}
    for env, key in SLO_ENV.items():
        raw = environ.get(env)
        if raw not in (None, ""):
            changes[key] = _slo_value(key, raw, env)
    for key in SLO_ENV.values():
        raw = getattr(args, key)
        if raw is not None:
            changes[key] = _slo_value(key, raw, "--" + key.replace("_", "-"))
    slo = replace(SloSettings(), measure_limit=args.measure_limit,
                  limit_file=args.limit_file.resolve(), **changes)
    if "--profile" not in rest:
        rest = ["--profile", "slo", *rest]
    settings, bench_args = resolve(rest, environ)
    # No database ceiling runs here; its binary is still checked (it prints the requests).
    settings = replace(settings, pgbench=False)
    if len(settings.items) != 1 or len(settings.concurrency) != 1:
        raise SettingsError("the open-loop study takes one ITEMS and one CONCURRENCY (the "
                            "closed-loop maximum's wrk connections)")
    return settings, slo, bench_args


def main(argv: list[str] | None = None, registry=None) -> int:
    settings, slo, args = resolve_or_exit("slo", resolve_slo, argv)
    study = SloStudy(settings, slo, registry=registry, dry_run=args.dry_run)
    return run_study("slo", study.run, lambda: study.bench.results_dir, study.bench.supervisor)


if __name__ == "__main__":
    sys.exit(main())
