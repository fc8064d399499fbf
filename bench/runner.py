"""The orchestrator behind `make bench`: checks -> calibration -> verify -> rotated runs -> report.

One measured server run: start the server from the registry (serverproc), wait for /health, warm up
with wrk (discarded), POST /stats/reset, run wrk while a sampler records CPU seconds and RSS of the
server's process tree and of the private cluster's postgres processes (wrk itself is measured
exactly with wait4), GET /stats, stop the server. The ceilings are participants like the servers
(ceiling.py). Records are built by pure functions (records.py); the folder is results.py's.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil

from rankbench import config, contract
from rankbench.servers import SERVERS, ServerSpec

from bench import (calibrate, ceiling, checks, db, environment, pgbench, pinning, plan, records,
                   serverproc, verify, wrk)
from bench.procs import Supervisor, Usage
from bench.progress import Progress
from bench.results import ResultsFolder, utc
from bench.sampler import PostgresGroups, ResourceSampler, process_tree
from bench.serverproc import HOST, BenchError, RunningServer, http_call
from bench.settings import Settings

__all__ = ["Bench", "BenchError"]


@dataclass
class MeasuredLoad:
    """What a measured load run gives the record: the `client` object, the generator's CPU during
    the load and how it was measured, its exact usage (wait4), its log and its thread count."""
    client: dict
    usage: Usage
    log: Path
    cpu_s: float
    measured: str
    threads: int
    tool: str = "wrk"


class Bench:
    def __init__(self, settings: Settings, registry: dict[str, ServerSpec] | None = None,
                 out: TextIO = sys.stdout, dry_run: bool = False) -> None:
        self.settings = settings
        self.registry = SERVERS if registry is None else registry
        self.out = out
        self.dry_run = dry_run
        self.supervisor = Supervisor()
        self.dsn = config.dsn()
        self.pin = pinning.plan(settings.pin)
        self.workers = settings.workers or self.pin.server_cores
        self.pg_affinity: pinning.PostgresAffinity | None = None
        self.folder: ResultsFolder | None = None
        self.facts: db.DbFacts | None = None
        self.postmaster_pid: int | None = None
        self.active_sampler: ResourceSampler | None = None
        self.env: dict = {}
        self._cargo_release: dict | None = None
        self._digests: dict[tuple, str] = {}

    @property
    def results_dir(self) -> Path | None:
        return self.folder.path if self.folder else None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- the whole study ------------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            # A second Ctrl-C must not cut the cleanup short and leave processes behind.
            in_main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
            try:
                self.cleanup()
            finally:
                if in_main:
                    signal.signal(signal.SIGINT, previous)

    def cleanup(self) -> list[str]:
        """Stop every process the harness started and put the cluster's CPU affinity back."""
        if self.active_sampler is not None:
            self.active_sampler.stop()
            self.active_sampler = None
        stopped = self.supervisor.stop_all()
        if self.pg_affinity is not None:
            self.pg_affinity.restore()
            self.pg_affinity = None
        return stopped

    def _run(self) -> int:
        s = self.settings
        t_start = time.monotonic()
        servers, skipped = self.check()
        languages = {name: self.registry[name].language for name in servers}
        # The ceilings run the rank transaction; another scenario would need its own clients.
        with_ceiling = s.ceiling and s.scenario == "rank"
        runs = plan.build_plan(servers, s.scenario, s.items, s.concurrency, s.repeats, with_ceiling,
                               pgbench_ceiling=with_ceiling and s.pgbench)
        estimates = [plan.estimate_run_s(r, s.warmup_s, s.duration_s, languages) for r in runs]
        verify_s = len(servers) * plan.VERIFY_S_PER_SERVER if s.verify else 0.0
        participants = list(runs[0].order) if runs else servers
        self.say(f"[bench] plan: {', '.join(participants)} (order rotated every repeat); items "
                 f"{list(s.items)} x concurrency {list(s.concurrency)} x {s.repeats} repeat(s), "
                 f"{s.duration_s} s runs after {s.warmup_s} s warm-up = {len(runs)} runs, estimated "
                 f"{plan.format_duration(verify_s + sum(estimates))}")
        clients = "min(concurrency, pool)" if s.ceiling_clients == "pool" else "concurrency"
        pinned = (f"on: server cpus {list(self.pin.server_cpus)}, postgres and load cpus "
                  f"{list(self.pin.other_cpus)}" if self.pin.enabled else "off")
        self.say(f"[bench] fairness: workers {self.workers}, pool {s.pool_size}, wrk -t{s.wrk_threads}, "
                 f"ceiling clients {clients}, pinning {pinned}")
        if s.pin and not self.pin.enabled:
            self.say("[bench] warning: PIN=1 needs at least 2 usable cores; running unpinned")
        if self.dry_run:
            return 0

        self.folder = ResultsFolder(s.results_root)
        self.say(f"[bench] results: {self.folder.path}")
        self.write_env(servers, skipped)
        self.calibrate()
        if self.pin.enabled and self.postmaster_pid:
            self.pg_affinity = pinning.PostgresAffinity(self.postmaster_pid, self.pin.other_cpus)
            self.pg_affinity.apply()

        if s.verify:
            self.verify_all(servers)
        else:
            self.say("[bench] verify: skipped (--no-verify)")

        progress = Progress(self.out, estimates)
        warnings_total = invalid_total = 0
        for run in runs:
            label = (f"{run.server} items={run.items} c={run.concurrency} "
                     f"repeat {run.repeat + 1}/{s.repeats}")
            progress.say(f"[{run.index + 1}/{len(runs)}] {label} | elapsed "
                         f"{plan.format_duration(progress.elapsed())}, ETA "
                         f"{plan.format_duration(progress.eta(run.index))}")
            t0 = time.monotonic()
            record = self.run_ceiling(run) if run.is_ceiling else self.run_server(run)
            progress.finished(run.index, time.monotonic() - t0)
            self.folder.append_record(record)
            warnings_total += len(record["warnings"])
            invalid_total += not record["valid"]
            progress.say("      " + records.summary_line(record))

        elapsed = time.monotonic() - t_start
        self.finish_env(elapsed, len(runs), warnings_total, invalid_total)
        self.folder.point_latest()
        self.say(f"[bench] done in {plan.format_duration(elapsed)}: {len(runs)} runs, "
                 f"{invalid_total} invalid, {warnings_total} warning(s); results in "
                 f"{self.folder.path}")
        if s.report:
            self.report()
        return 0

    # -- checks ---------------------------------------------------------------------------------
    def check(self) -> tuple[list[str], dict[str, list[str]]]:
        s = self.settings
        try:
            servers, skipped = checks.select_servers(s.servers, self.registry, s.study)
            checks.tools(need_pgbench=s.ceiling and s.pgbench, need_taskset=self.pin.enabled)
            if s.ceiling:
                checks.ceiling_binary()
            checks.scenario(s.scenario)
            if s.verify or any(self.registry[n].real_scores for n in servers):
                checks.model_artifacts()
            self.facts = db.facts(self.dsn)
        except (checks.CheckError, db.DatabaseError) as exc:
            raise BenchError(str(exc), phase="checks") from None
        for name, missing in skipped.items():
            self.say(f"[bench] skipping {name}: needs {missing[0]}")
        f = self.facts
        for table, rng in (("users", f.users), ("items", f.items)):
            if not rng.contiguous:
                self.say(f"[bench] warning: {table} ids {rng.min}..{rng.max} are not contiguous "
                         f"({rng.count} rows): some random ids will be unknown")
        if self._db_is_local():
            from rankbench import pg
            self.postmaster_pid = pg.running_pid(pg.Cluster())
        measured = ("measured via postmaster " + str(self.postmaster_pid) if self.postmaster_pid
                    else "NOT measured (not the private cluster)")
        self.say(f"[bench] checks: ok (PostgreSQL {f.server_version.split()[0]}, users "
                 f"{f.users.min}..{f.users.max}, items {f.items.min}..{f.items.max}, wrk, "
                 f"{'ceiling client, ' if s.ceiling else ''}artifacts; postgres processes {measured})")
        return servers, skipped

    def _db_is_local(self) -> bool:
        return db.db_port(self.dsn) == config.PG_PORT and \
            db.db_host(self.dsn) in ("127.0.0.1", "localhost", "::1")

    # -- env.json ---------------------------------------------------------------------------------
    def write_env(self, servers: list[str], skipped: dict[str, list[str]]) -> None:
        s = self.settings
        tools = {"wrk": wrk.version(),
                 "pgbench": pgbench.version() if s.ceiling and s.pgbench else None,
                 "rankbench-ceiling": str(ceiling.binary()) if s.ceiling else None}
        server_info = {}
        for name in servers:
            spec = self.registry[name]
            server_info[name] = dict(
                spec.describe(),
                command=[db.redact(a) if a == self.dsn else a
                         for a in self.server_command(spec, spec.default_port)],
                build=self.build_info(spec))
        env = environment.collect(
            settings_json=dict(s.as_json(), workers_effective=self.workers,
                               dsn=db.redact(self.dsn), skipped_servers=skipped),
            pinning=self.pin.as_json(), db_version=self.facts.server_version, tool_versions=tools,
            servers=server_info)
        env["schema"] = contract.SCHEMA
        env["started_at"] = utc()
        env["id_ranges"] = {"users": vars(self.facts.users), "items": vars(self.facts.items)}
        self.env = env
        self.folder.write_json("env.json", env)

    def calibrate(self) -> None:
        """How fast the machine is today: CPU per request is comparable only within one run."""
        self.env["calibration"] = calibrate.measure()
        c = self.env["calibration"]
        self.say(f"[bench] calibration: python {calibrate.show(c.get('python_ns_per_iter'))} ns/iter, "
                 f"native {calibrate.show(c.get('native_ns_per_iter'))} ns/iter")
        self.folder.write_json("env.json", self.env)

    def finish_env(self, elapsed: float, runs: int, warnings: int, invalid: int) -> None:
        self.env.update(finished_at=utc(), elapsed_s=round(elapsed, 1), runs=runs,
                        warnings=warnings, invalid_runs=invalid, complete=True)
        self.folder.write_json("env.json", self.env)

    def build_info(self, spec: ServerSpec) -> dict:
        if spec.language == "rust":
            binary = next(iter(spec.needs), config.CANDLE_BINARY)
            if self._cargo_release is None:
                self._cargo_release = environment.rust_build().get("profile_release", {})
            return {"kind": "cargo", "profile": "release" if "release" in binary.parts else "unknown",
                    "binary": str(binary), "sha256": self._file_digest(binary),
                    "profile_release": self._cargo_release, "RUSTFLAGS": os.environ.get("RUSTFLAGS")}
        return {"kind": spec.language, "interpreter": spec.build_command([])[0]}

    def _file_digest(self, path: Path) -> str | None:
        """sha256 of a binary, cached by (mtime, size): a rebuild during the study shows up."""
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._digests:
            with open(path, "rb") as handle:
                self._digests[key] = hashlib.file_digest(handle, "sha256").hexdigest()
        return self._digests[key]

    # -- servers --------------------------------------------------------------------------------
    def server_command(self, spec: ServerSpec, port: int) -> list[str]:
        return spec.command(host=HOST, port=port, dsn=self.dsn, workers=self.workers,
                            pool_size=self.settings.pool_size, model_dir=config.ARTIFACTS_DIR)

    def start_server(self, name: str, tag: str, phase: str) -> RunningServer:
        spec = self.registry[name]
        port = serverproc.choose_port(spec)
        argv = self.pin.prefix("server") + self.server_command(spec, port)
        return serverproc.start(self.supervisor, spec, argv, port, self.folder.logs, tag, phase,
                                config.ROOT)

    def stop_server(self, server: RunningServer) -> tuple[int | None, float]:
        return serverproc.stop(self.supervisor, server)

    # -- verify ---------------------------------------------------------------------------------
    def verify_all(self, servers: list[str]) -> None:
        s, f = self.settings, self.facts
        requests = verify.make_requests(s.verify_requests, s.seed, f.users.min, f.users.max,
                                        f.items.min, f.items.max)
        try:
            from rankbench.reference import load_reference
            model = load_reference(config.ARTIFACTS_DIR)
        except (ImportError, OSError, ValueError) as exc:
            raise BenchError(f"reference model unavailable ({exc}); run `make model`",
                             phase="verify") from None
        try:
            users, items = db.fetch_features(self.dsn, sorted({r["user_id"] for r in requests}),
                                             sorted({i for r in requests for i in r["item_ids"]}))
        except db.DatabaseError as exc:
            raise BenchError(str(exc), phase="verify") from None
        answers = verify.reference_answers(requests, users, items, model.scores)
        reports = []
        for name in servers:
            t0 = time.monotonic()
            server = self.start_server(name, f"verify-{name}", "verify")
            try:
                report = verify.verify_server(name, HOST, server.port, self.registry[name].real_scores,
                                              requests, answers, s.verify_tolerance)
            except verify.VerifyError as exc:
                self.folder.write_json("verify.json", {"ok": False,
                                                       "servers": [r.as_json() for r in reports],
                                                       "failure": str(exc)})
                raise BenchError(str(exc), name, "verify", server.stderr) from None
            finally:
                self.stop_server(server)
            reports.append(report)
            what = (f"max |score - reference| {report.max_abs_diff:.1e}, {report.near_tie_swaps} "
                    f"near-tie swap(s)" if report.real_scores else "floor: shape and order only")
            self.say(f"[bench] verify: {name} ok ({report.requests} requests, {report.items_checked} "
                     f"items; {what}; mean body {report.mean_body_bytes} bytes; "
                     f"{time.monotonic() - t0:.1f} s)")
        self.folder.write_json("verify.json", {"ok": True, "requests": len(requests),
                                               "tolerance": s.verify_tolerance, "seed": s.seed,
                                               "servers": [r.as_json() for r in reports]})

    # -- one measured server run ----------------------------------------------------------------
    def script_args(self, run: plan.Run) -> dict[str, int]:
        f = self.facts
        return {"items": run.items, "top_k": self.settings.top_k, "user_min": f.users.min,
                "user_max": f.users.max, "item_min": f.items.min, "item_max": f.items.max,
                "seed": self.settings.seed + run.repeat, "gzip": int(self.settings.accept_gzip)}

    def wrk_run(self, server: RunningServer, run: plan.Run, seconds: int, tag: str,
                phase: str = "run: load") -> tuple[dict, Usage, Path]:
        s = self.settings
        argv = self.pin.prefix("other") + wrk.command(
            f"http://{HOST}:{server.port}/rank", run.scenario, threads=s.wrk_threads,
            connections=run.concurrency, duration_s=seconds, timeout_s=s.wrk_timeout_s,
            script_args=self.script_args(run))
        out = self.folder.logs / f"{tag}.wrk.txt"
        proc = self.supervisor.start(argv, "wrk", out, out)
        try:
            usage = self.supervisor.wait_measured(proc, timeout_s=seconds + s.wrk_timeout_s + 120)
        except TimeoutError as exc:
            raise BenchError(str(exc), server.name, phase, out) from None
        if proc.returncode != 0:
            raise BenchError(f"wrk exited with code {proc.returncode}", server.name, phase, out)
        try:
            data = wrk.parse_output(out.read_text(errors="replace"))
        except wrk.WrkOutputError as exc:
            raise BenchError(str(exc), server.name, phase, out) from None
        return data, usage, out

    def warm_up(self, server: RunningServer, run: plan.Run, tag: str) -> dict:
        """The discarded warm-up before a measured run; returns its errors by kind (non-zero only)."""
        warm, _, _ = self.wrk_run(server, run, self.settings.warmup_s, tag + ".warmup",
                                  "run: warm-up")
        return {k: v for k, v in warm["errors"].items() if v}

    def measured_load(self, server: RunningServer, run: plan.Run, tag: str) -> MeasuredLoad:
        """The measured load of a server run (wrk here; bench.slo sends an open-loop one)."""
        data, usage, out = self.wrk_run(server, run, self.settings.duration_s, tag)
        # wrk's CPU during the load (rank.lua reports it); its whole life from wait4 otherwise.
        window_cpu = wrk.window_cpu_s(data)
        return MeasuredLoad(
            client=wrk.client_record(data, run.concurrency), usage=usage, log=out,
            cpu_s=window_cpu if window_cpu is not None else usage.cpu_s,
            measured="wrk os.clock() init..done" if window_cpu is not None else
            "wait4 (whole process)", threads=self.settings.wrk_threads)

    def postgres_groups(self, client_pid: int):
        if not self.postmaster_pid:
            return None
        return PostgresGroups(self.postmaster_pid, db.db_port(self.dsn), lambda: [client_pid])

    def run_server(self, run: plan.Run) -> dict:
        tag = f"{run.index + 1:03d}-{run.server}-i{run.items}-c{run.concurrency}-r{run.repeat}"
        server = self.start_server(run.server, tag, "run")
        try:
            return self._measure_server(run, server, tag)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # The server stopped answering (crashed, hung up): say so, with its stderr.
            raise BenchError(f"{type(exc).__name__}: {exc}", run.server, "run", server.stderr) from None

    def _measure_server(self, run: plan.Run, server: RunningServer, tag: str) -> dict:
        s = self.settings
        started_at = utc()
        build = self.build_info(server.spec)  # the binary just started (its digest, for rebuilds)
        warmup_errors: dict = {}
        statements_error = None
        try:
            if s.warmup_s > 0:
                warmup_errors = self.warm_up(server, run, tag)
            status, body = http_call(server.port, "POST", "/stats/reset")
            if status != 204:
                raise BenchError(f"POST /stats/reset answered {status}: {body[:200]!r}", run.server,
                                 "run: stats reset", server.stderr)
            pg_groups = self.postgres_groups(server.proc.pid)
            self.supervisor.remember_tree(server.proc)
            server_pid = server.proc.pid

            def groups():
                found = {"server": process_tree(server_pid)}
                if pg_groups is not None:
                    found.update(pg_groups())
                return found

            sampler = self.active_sampler = ResourceSampler(groups)
            rusage0 = os.times()
            sampler.start()
            load = self.measured_load(server, run, tag)
            sampled = sampler.stop()
            self.active_sampler = None
            rusage1 = os.times()
            if server.proc.poll() is not None:
                raise BenchError(f"exited with code {server.proc.returncode} during the run",
                                 run.server, "run: load", server.stderr)
            status, body = http_call(server.port, "GET", "/stats", timeout=10.0)
            if status != 200:
                raise BenchError(f"GET /stats answered {status}", run.server, "run: stats",
                                 server.stderr)
            stats = json.loads(body)
            try:
                statements = db.statements_of(self.dsn, self._db_client_ports(server_pid))
            except db.DatabaseError as exc:
                statements, statements_error = None, str(exc)
            pss_mb = _pss_mb(process_tree(server_pid))
            db_pss_mb = _pss_mb(pg_groups()["db"]) if pg_groups is not None else None
            threads = _threads(process_tree(server_pid))
        finally:
            exit_code, stop_s = self.stop_server(server)

        client = load.client
        requests = client["requests"]
        harness_cpu = (rusage1.user + rusage1.system) - (rusage0.user + rusage0.system)
        resources = records.resources(sampled, requests, harness_cpu, psutil.cpu_count(),
                                      client["duration_s"])
        resources["server"]["pss_end_mb"] = pss_mb
        resources["server"]["threads_end"] = threads
        if resources.get("db"):
            # RSS counts shared_buffers pages once per backend; PSS splits them fairly.
            resources["db"]["pss_end_mb"] = db_pss_mb
        load_cpu = load.cpu_s
        resources["load"] = records.load_record(load_cpu, requests, client["duration_s"],
                                                load.usage, load.measured)
        records.add_unattributed(resources)
        client["bytes_per_response"] = round(client["bytes"] / requests, 2) if requests else None

        built = self.env.get("servers", {}).get(run.server, {}).get("build", {})
        warnings = records.server_run_warnings(records.ServerRunFacts(
            client=client, stats=stats, workers=self.workers, backend=server.spec.backend,
            load_cpu_s=load_cpu, wrk_threads=load.threads, statements=statements or [],
            contract_statements=set(contract.statements_for(server.spec.variant)),
            exit_code=exit_code,
            warmup_errors=warmup_errors, build_sha_now=build.get("sha256"),
            build_sha_at_start=built.get("sha256"), binary=build.get("binary"),
            tool=load.tool))
        if statements_error:
            warnings.append(f"database statements not checked: {statements_error}")
        warnings += records.foreign_warnings(resources, bool(self.postmaster_pid))

        record = records.base_record(run, s, started_at)
        record.update(
            server=run.server, backend=server.spec.backend, workers=self.workers,
            pool_size=s.pool_size, client=client, stages=stats.get("stages", {}),
            resources=resources,
            server_info={"health": server.health, "server": stats.get("server"),
                         "backend": stats.get("backend"), "workers": stats.get("workers"),
                         "requests": stats.get("requests"), "errors": stats.get("errors"),
                         "batching": stats.get("batching"),
                         "port": server.port, "startup_s": round(server.startup_s, 3),
                         "stop_s": round(stop_s, 3), "exit_code": exit_code,
                         "stderr_log": self.folder.relative(server.stderr),
                         "wrk_log": self.folder.relative(load.log)},
            db_statements=statements,
            db_statements_error=statements_error,
            fairness=self._fairness(build, stats.get("runtime_threads")),
            warnings=warnings)
        return records.finish(record)

    def _db_client_ports(self, pid: int) -> list[int]:
        port = db.db_port(self.dsn)
        found = set()
        for proc in process_tree(pid):
            try:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == port:
                        found.add(conn.laddr.port)
            except psutil.Error:
                continue
        return sorted(found)

    def _fairness(self, build: dict | None, runtime_threads: dict | None = None) -> dict:
        """The settings every server shares, and the thread settings each server reported itself
        (what its runtime says at run time, not what the contract asks for)."""
        return {"workers": self.workers, "pool_size": self.settings.pool_size,
                "wrk_threads": self.settings.wrk_threads, "runtime_threads": runtime_threads,
                "build": build, "pinning": self.pin.as_json()}

    # -- the database ceilings ------------------------------------------------------------------
    def run_ceiling(self, run: plan.Run) -> dict:
        tag = f"{run.index + 1:03d}-{run.server}-i{run.items}-c{run.concurrency}-r{run.repeat}"
        ctx = ceiling.CeilingContext(
            supervisor=self.supervisor, dsn=self.dsn, logs=self.folder.logs,
            relative=self.folder.relative, pin_prefix=self.pin.prefix("other"),
            postgres_groups=self.postgres_groups, pool_size=self.settings.pool_size,
            clients_rule=self.settings.ceiling_clients, settings=self.settings, facts=self.facts,
            server_version=self.facts.server_version, fairness=self._fairness(None),
            db_measured=bool(self.postmaster_pid))
        return ceiling.RUNNERS[run.server](ctx, run, tag, utc())

    # -- output ---------------------------------------------------------------------------------
    def report(self) -> None:
        result = subprocess.run([sys.executable, "-m", "analysis", "report", str(self.results_dir)],
                                cwd=config.ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-5:]
            self.say(f"[bench] report failed (exit {result.returncode}); results are kept in "
                     f"{self.results_dir}:")
            for line in last:
                self.say(f"    {line}")
            return
        self.say(f"[bench] report: {self.results_dir / 'report.md'}")


def _pss_mb(procs: list[psutil.Process]) -> float | None:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.Error, AttributeError):
            return None
    return round(total / 2**20, 1)


def _threads(procs: list[psutil.Process]) -> int | None:
    try:
        return sum(p.num_threads() for p in procs)
    except psutil.Error:
        return None
