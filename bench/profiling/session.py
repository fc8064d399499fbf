"""A profiling session: every server under the bench's load, unprofiled and profiled.

For each server and configuration: start it exactly as the bench does (registry command line,
serverproc.start, the same pinning), warm up with wrk, then measured windows on the same process,
in an order that rotates every repeat: `unprofiled`; `perf` (perf over every process of the server
tree); and on CPython < 3.12 `py-spy` (py-spy alone, in a window of its own: each of its --native
samples stops the process, which would change the timing that perf sees). Each window runs wrk
with the bench's scenario script while the bench's ResourceSampler records the CPU of the server
tree and of its postgres backends. After the server has stopped, perf's samples inside its window
are attributed (attribute.py, with py-spy's proportions for unnamed Python code) and folded into
flame graphs.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil

from bench import db, environment, pinning, serverproc, wrk
from bench.plan import Run, rotated
from bench.profiling import attribute, stacks, tools
from bench.profiling.records import SCHEMA, profile_record, window_record
from bench.results import ResultsFolder, utc
from bench.runner import Bench
from bench.sampler import ResourceSampler, process_tree
from bench.serverproc import BenchError, RunningServer, http_call
from bench.settings import Settings
from rankbench import config as rb_config
from rankbench.servers import ServerSpec

SETTLE_S = 0.5      # after the profilers report they sample, before the window opens


class ProfileFolder(ResultsFolder):
    """results/<UTC stamp>-profile/ with logs/, flame/ and (with --keep-perf-data) perf/."""

    def __init__(self, root: Path, suffix: str = "profile") -> None:  # not results/<stamp>/
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path, n = root / f"{stamp}-{suffix}", 1
        while path.exists():
            n += 1
            path = root / f"{stamp}-{suffix}-{n}"
        path.mkdir()
        self.root, self.path = root, path
        self.logs = path / "logs"
        self.flame = path / "flame"
        self.perf = path / "perf"
        for folder in (self.logs, self.flame, self.perf):
            folder.mkdir()

    def append_profile(self, record: dict) -> None:
        with open(self.path / "profile.jsonl", "a") as handle:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")


@dataclass
class Job:
    server: str
    items: int
    concurrency: int
    repeat: int
    index: int

    @property
    def tag(self) -> str:
        return f"{self.index + 1:02d}-{self.server}-i{self.items}-c{self.concurrency}-r{self.repeat}"


class ProfileSession:
    """The bench's harness (`Bench`: checks, supervisor, pinning, server command lines, wrk runs,
    postgres groups) driven window by window, with the profilers around the perf window."""

    def __init__(self, settings: Settings, profiler: tools.ProfilerConfig,
                 registry: dict[str, ServerSpec] | None = None, out: TextIO = sys.stdout,
                 flamegraphs: bool = True, keep_perf_data: bool = False) -> None:
        self.settings = settings
        self.profiler = profiler
        self.bench = Bench(settings, registry=registry, out=out)
        self.registry = self.bench.registry
        self.out = out
        self.flamegraphs = flamegraphs
        self.keep_perf_data = keep_perf_data
        self.folder: ProfileFolder | None = None
        self.perf: str | None = None
        self.pyspy: str | None = None
        self.inferno: str | None = None
        self.env: dict = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- checks -----------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Servers to profile; BenchError or tools.ProfilerUnavailable (one line) otherwise."""
        # First the profiler: a machine that does not permit profiling needs nothing else.
        self.perf = tools.check_perf()
        servers, _ = self.bench.check()
        if any(self.mode(n) == "py-spy" for n in servers):
            self.pyspy = tools.check_pyspy()
        self.inferno = tools.inferno_binary() if self.flamegraphs else None
        if self.flamegraphs and self.inferno is None:
            self.say("[profile] note: inferno-flamegraph not found (cargo install inferno): the "
                     "collapsed stacks are kept, no SVG is drawn")
        return servers

    def mode(self, name: str) -> str:
        return tools.python_mode(self.registry[name].interpreter)

    def plan(self, servers: list[str]) -> list[Job]:
        s, jobs = self.settings, []
        for items in s.items:
            for concurrency in s.concurrency:
                for repeat in range(s.repeats):
                    for name in rotated(servers, repeat):
                        jobs.append(Job(name, items, concurrency, repeat, len(jobs)))
        return jobs

    # -- the session ------------------------------------------------------------------------------
    def run(self, dry_run: bool = False) -> int:
        try:
            return self._run(dry_run)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Stop every process started (servers, wrk, profilers) and the sampler; put the
        cluster's CPU affinity back."""
        self.bench.cleanup()

    def _run(self, dry_run: bool) -> int:
        s = self.settings
        t_start = time.monotonic()
        servers = self.check()
        jobs = self.plan(servers)
        per_job = s.warmup_s + 3 * s.duration_s + 12
        self.say(f"[profile] plan: {', '.join(servers)}; items {list(s.items)} x concurrency "
                 f"{list(s.concurrency)} x {s.repeats} repeat(s) = {len(jobs)} server run(s), each "
                 f"{s.warmup_s} s warm-up + {s.duration_s} s unprofiled + {s.duration_s} s under perf "
                 f"(+ {s.duration_s} s under py-spy on CPython < 3.12), about "
                 f"{len(jobs) * per_job / 60:.0f} min with post-processing")
        modes = {n: self.mode(n) for n in servers}
        self.say(f"[profile] profilers: perf cpu-clock every {self.profiler.period_ns // 1000} us of "
                 f"CPU, dwarf stacks; Python names: " +
                 ", ".join(f"{n} {m}" for n, m in modes.items() if m != "native"))
        if dry_run:
            return 0
        self.folder = self.bench.folder = ProfileFolder(s.results_root)
        self.say(f"[profile] results: {self.folder.path}")
        self.write_env(servers, modes)
        if self.bench.pin.enabled and self.bench.postmaster_pid:
            self.bench.pg_affinity = pinning.PostgresAffinity(self.bench.postmaster_pid,
                                                              self.bench.pin.other_cpus)
            self.bench.pg_affinity.apply()
        for job in jobs:
            self.say(f"[{job.index + 1}/{len(jobs)}] {job.server} items={job.items} "
                     f"c={job.concurrency} repeat {job.repeat + 1}/{s.repeats}")
            record = self.profile_server(job)
            self.folder.append_profile(record)
            self.say("      " + summary_line(record))
        self.env.update(finished_at=utc(), elapsed_s=round(time.monotonic() - t_start, 1),
                        complete=True)
        self.folder.write_json("env.json", self.env)
        if not any(self.folder.perf.iterdir()):
            self.folder.perf.rmdir()           # perf.data files are kept only on request
        if s.report:
            self.report()
        return 0

    def write_env(self, servers: list[str], modes: dict[str, str]) -> None:
        s = self.settings
        tool_versions = {"wrk": wrk.version(), "perf": tools.version(self.perf),
                         "py-spy": tools.version(self.pyspy), "inferno": tools.inferno_version(self.inferno)}
        server_info = {name: dict(self.registry[name].describe(), python_frames=modes[name])
                       for name in servers}
        env = environment.collect(
            settings_json=dict(s.as_json(), workers_effective=self.bench.workers,
                               dsn=db.redact(self.bench.dsn)),
            pinning=self.bench.pin.as_json(), db_version=self.bench.facts.server_version,
            tool_versions=tool_versions, servers=server_info)
        env.update(kind="profile", schema=SCHEMA, started_at=utc(), profiler=self.profiler.as_json(),
                   perf_event_paranoid=tools.read_int(tools.PARANOID))
        self.env = env
        self.folder.write_json("env.json", env)

    # -- one server -------------------------------------------------------------------------------
    def profile_server(self, job: Job) -> dict:
        spec = self.registry[job.server]
        mode = self.mode(job.server)
        port = serverproc.choose_port(spec)
        argv = self.bench.pin.prefix("server") + self.bench.server_command(spec, port)
        if mode == "perf-trampoline":
            argv = tools.with_perf_trampoline(argv)
        started_at = utc()
        server = serverproc.start(self.bench.supervisor, spec, argv, port, self.folder.logs,
                                  job.tag, "profile", rb_config.ROOT)
        perf_data = self.folder.perf / f"{job.tag}.perf.data"
        pyspy_out = self.folder.perf / f"{job.tag}.pyspy.txt"
        try:
            if self.settings.warmup_s > 0:
                self.load(server, job, self.settings.warmup_s, f"{job.tag}.warmup")
            kinds = ["unprofiled", "perf"] + (["py-spy"] if mode == "py-spy" else [])
            order = kinds[job.repeat % len(kinds):] + kinds[:job.repeat % len(kinds)]
            windows = {}
            for which in order:
                windows[which] = self.window(server, job, which, perf_data, pyspy_out)
            if server.proc.poll() is not None:
                raise BenchError(f"exited with code {server.proc.returncode} during the run",
                                 job.server, "profile", server.stderr)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise BenchError(f"{type(exc).__name__}: {exc}", job.server, "profile",
                             server.stderr) from None
        finally:
            self.bench.stop_server(server)
        attribution, flames = self.attribute(job, mode, perf_data, pyspy_out,
                                             windows["perf"]["window"])
        record = profile_record(job=job, spec=spec, settings=self.settings, workers=self.bench.workers,
                                started_at=started_at, mode=mode, order=list(order),
                                windows=windows, attribution=attribution, flames=flames,
                                relative=self.folder.relative)
        if not self.keep_perf_data:
            perf_data.unlink(missing_ok=True)
        return record

    def load(self, server: RunningServer, job: Job, seconds: int, tag: str):
        """wrk with the bench's scenario and arguments: the bench's own wrk run."""
        run = Run(index=job.index, server=job.server, scenario=self.settings.scenario,
                  items=job.items, concurrency=job.concurrency, repeat=job.repeat)
        data, usage, _ = self.bench.wrk_run(server, run, seconds, tag, "profile: load")
        return data, usage

    def window(self, server: RunningServer, job: Job, which: str, perf_data: Path,
               pyspy_out: Path) -> dict:
        """One measured window: `unprofiled`, `perf` (perf over the whole tree) or `py-spy` (py-spy
        alone: its pauses would distort perf's picture, so it gets a window of its own)."""
        status, body = http_call(server.port, "POST", "/stats/reset")
        if status != 204:
            raise BenchError(f"POST /stats/reset answered {status}: {body[:200]!r}", job.server,
                             "profile: stats reset", server.stderr)
        server_pid = server.proc.pid
        pg_groups = self.bench.postgres_groups(server_pid)

        def groups():
            found = {"server": process_tree(server_pid)}
            if pg_groups is not None:
                found.update(pg_groups())
            return found

        recorders: list[tools.Recorder] = []
        if which == "perf":
            pids = [p.pid for p in process_tree(server_pid)]
            recorders.append(tools.Recorder(
                "perf", tools.perf_record_command(self.perf, pids, perf_data, self.profiler),
                perf_data, self.folder.logs / f"{job.tag}.perf.log"))
        elif which == "py-spy":
            recorders.append(tools.Recorder(
                "py-spy", tools.pyspy_record_command(self.pyspy, server_pid, pyspy_out,
                                                     self.profiler),
                pyspy_out, self.folder.logs / f"{job.tag}.pyspy.log",
                ready_text="Sampling process"))
        for recorder in recorders:
            recorder.start(self.bench.supervisor)
        if recorders:
            time.sleep(SETTLE_S)
        tag = f"{job.tag}.{which}"
        sampler = self.bench.active_sampler = ResourceSampler(groups)
        harness0 = os.times()
        t0 = time.monotonic()
        sampler.start()
        data, usage = self.load(server, job, self.settings.duration_s, tag)
        sampled = sampler.stop()
        t1 = time.monotonic()
        harness1 = os.times()
        self.bench.active_sampler = None
        profilers = {}
        for recorder in recorders:
            used = recorder.stop(self.bench.supervisor)
            profilers[recorder.name] = {"cpu_s": round(used.cpu_s, 4), "user_s": round(used.user_s, 4),
                                        "system_s": round(used.system_s, 4),
                                        "rss_peak_mb": round(used.maxrss_mb, 1)}
            if recorder.name == "py-spy":
                profilers["py-spy"].update(_pyspy_counts(recorder.log))
        harness_cpu = (harness1.user + harness1.system) - (harness0.user + harness0.system)
        return window_record(data=data, usage=usage, sampled=sampled, concurrency=job.concurrency,
                             harness_cpu_s=harness_cpu, cores=psutil.cpu_count(),
                             wrk_threads=self.settings.wrk_threads, window=(t0, t1),
                             profilers=profilers, db_measured=bool(self.bench.postmaster_pid))

    # -- after the run ----------------------------------------------------------------------------
    def attribute(self, job: Job, mode: str, perf_data: Path, pyspy_out: Path,
                  window: tuple[float, float]) -> tuple[attribute.Attribution, dict]:
        folded: Counter = Counter()

        def in_window(samples):
            for sample in samples:
                if window[0] <= sample.time_s <= window[1]:
                    folded[stacks.folded_stack(sample)] += stacks.folded_value(sample)
                    yield sample

        script = tools.perf_script(self.perf, perf_data)
        lost: list[tuple[float, int]] = []
        try:
            pyspy_stacks = (list(stacks.parse_pyspy_raw(pyspy_out.read_text().splitlines()))
                            if mode == "py-spy" else None)
            result = attribute.attribute(
                in_window(stacks.parse_perf_script(script.stdout, lost=lost)), pyspy_stacks)
        finally:
            script.stdout.close()
            script.wait()
        result.lost = sum(n for t, n in lost if window[0] <= t <= window[1])
        flames = {}
        perf_folded = self.folder.flame / f"{job.tag}.perf.folded"
        stacks.write_folded(folded, perf_folded)
        flames["perf_folded"] = perf_folded
        if pyspy_stacks is not None:
            python_folded = self.folder.flame / f"{job.tag}.python.folded"
            stacks.write_folded(stacks.fold_pyspy(pyspy_stacks), python_folded)
            flames["python_folded"] = python_folded
            pyspy_out.unlink(missing_ok=True)
        if self.inferno:
            title = f"{job.server} items={job.items} c={job.concurrency}"
            svg = perf_folded.with_suffix(".svg")
            if tools.flamegraph(self.inferno, perf_folded, svg,
                                f"{title}: perf, server CPU (kernel + user)", "us"):
                flames["perf_svg"] = svg
            if "python_folded" in flames:
                svg = flames["python_folded"].with_suffix(".svg")
                if tools.flamegraph(self.inferno, flames["python_folded"], svg,
                                    f"{title}: py-spy --native (Python names, no kernel)",
                                    "samples"):
                    flames["python_svg"] = svg
        return result, flames

    def report(self) -> None:
        result = subprocess.run([sys.executable, "-m", "analysis.profile_report",
                                 str(self.folder.path)], cwd=rb_config.ROOT, capture_output=True,
                                text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            self.say(f"[profile] report failed (exit {result.returncode}): " + " | ".join(tail))
            return
        self.say(f"[profile] report: {self.folder.path / 'profile.md'}")


_PYSPY_SUMMARY = re.compile(r"Samples: (\d+) Errors: (\d+)")


def _pyspy_counts(log: Path) -> dict:
    try:
        match = _PYSPY_SUMMARY.search(log.read_text(errors="replace"))
    except OSError:
        match = None
    return {"samples": int(match.group(1)), "errors": int(match.group(2))} if match else {}


def summary_line(record: dict) -> str:
    plain, prof = record["windows"]["unprofiled"]["client"], record["windows"]["perf"]["client"]
    profile = record["profile"]
    top = sorted(((v["share"], k) for k, v in profile["categories"].items() if k != "other"),
                 reverse=True)[:3]
    tops = ", ".join(f"{k} {share:.0%}" for share, k in top)
    cpu = record["windows"]["unprofiled"]["resources"]["server"].get("cpu_us_per_req")
    spy = record["windows"].get("py-spy")
    spied = f", {spy['client']['rps']:.0f} under py-spy" if spy else ""
    line = (f"{plain['rps']:.0f} req/s unprofiled, {prof['rps']:.0f} under perf "
            f"({record['overhead']['perf']['rps_change']:+.0%}){spied}; server {cpu:.0f} us CPU/req; "
            f"{profile['samples']} samples, {profile['named_share']:.1%} named ({tops})")
    if record["warnings"]:
        line += "; WARNING: " + "; ".join(record["warnings"])
    return line
