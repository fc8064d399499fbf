"""The orchestrator behind `make bench`: checks -> verify -> interleaved runs -> results -> report.

One measured server run: start the server from the registry (own process group, stderr to a log
file), wait for /health, warm up with wrk (discarded), POST /stats/reset, run wrk while a sampler
records CPU seconds and RSS of the server's process tree and of the private cluster's postgres
processes (wrk itself is measured exactly with wait4), GET /stats, stop the server (SIGTERM, grace,
SIGKILL). The database ceiling is a pgbench run of the same transaction, recorded the same way.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import psutil

from rankbench import config
from rankbench.servers import SERVERS, ServerSpec

from bench import checks, db, environment, histogram, pgbench, pinning, plan, verify, wrk
from bench.procs import Supervisor, Usage, tail
from bench.sampler import PostgresGroups, ResourceSampler, process_tree
from bench.settings import Settings

SCHEMA = 1
HOST = "127.0.0.1"
WRK_SATURATED = 0.90  # share of one core per wrk thread
OTHER_LOAD_SHARE = 0.10  # CPU used by other processes during a run, as a share of the machine


class BenchError(RuntimeError):
    """A failure that stops the run: names the server and the phase, and points at its stderr."""

    def __init__(self, message: str, server: str | None = None, phase: str | None = None,
                 log: Path | None = None):
        super().__init__(message)
        self.server = server
        self.phase = phase
        self.log = log

    def describe(self) -> list[str]:
        if self.server and self.phase:
            head = f"bench: {self.server} failed in {self.phase}: "
        elif self.server or self.phase:
            head = f"bench: {self.server or self.phase}: "
        else:
            head = "bench: "
        lines = [head + str(self)]
        last = tail(self.log)
        if last:
            lines.append(f"  last lines of {self.log}:")
            lines += [f"    {line}" for line in last]
        return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def http_call(port: int, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def listeners(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}


@dataclass
class RunningServer:
    name: str
    spec: ServerSpec
    proc: subprocess.Popen
    port: int
    stdout: Path
    stderr: Path
    startup_s: float = 0.0
    health: dict | None = None


class Progress:
    """One line per phase and per run; the ETA scales the plan's estimates by how long runs took."""

    def __init__(self, out: TextIO, estimates: list[float]) -> None:
        self.out = out
        self.estimates = estimates
        self.started = time.monotonic()
        self.done_estimated = 0.0
        self.done_actual = 0.0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def eta(self, next_index: int) -> float:
        remaining = sum(self.estimates[next_index:])
        factor = self.done_actual / self.done_estimated if self.done_estimated > 0 else 1.0
        return remaining * factor

    def finished(self, index: int, seconds: float) -> None:
        self.done_estimated += self.estimates[index]
        self.done_actual += seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started


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
        self.results_dir: Path | None = None
        self.logs_dir: Path | None = None
        self.facts: db.DbFacts | None = None
        self.postmaster_pid: int | None = None
        self.active_sampler: ResourceSampler | None = None
        self._cargo_release: dict | None = None
        self._digests: dict[tuple, str] = {}

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
        # The ceiling runs the rank transaction; another scenario would need its own pgbench script.
        with_ceiling = s.ceiling and s.scenario == "rank"
        runs = plan.build_plan(servers, s.scenario, s.items, s.concurrency, s.repeats, with_ceiling)
        estimates = [plan.estimate_run_s(r, s.warmup_s, s.duration_s, languages) for r in runs]
        verify_s = len(servers) * plan.VERIFY_S_PER_SERVER if s.verify else 0.0
        participants = servers + ([plan.CEILING] if with_ceiling else [])
        self.say(f"[bench] plan: {', '.join(participants)}; items {list(s.items)} x concurrency "
                 f"{list(s.concurrency)} x {s.repeats} repeat(s), {s.duration_s} s runs after "
                 f"{s.warmup_s} s warm-up = {len(runs)} runs, estimated "
                 f"{plan.format_duration(verify_s + sum(estimates))}")
        clients = "min(concurrency, pool)" if s.ceiling_clients == "pool" else "concurrency"
        pinned = (f"on: server cpus {list(self.pin.server_cpus)}, postgres and load cpus "
                  f"{list(self.pin.other_cpus)}" if self.pin.enabled else "off")
        self.say(f"[bench] fairness: workers {self.workers}, pool {s.pool_size}, wrk -t{s.wrk_threads}, "
                 f"pgbench -c {clients}, pinning {pinned}")
        if s.pin and not self.pin.enabled:
            self.say("[bench] warning: PIN=1 needs at least 2 usable cores; running unpinned")
        if self.dry_run:
            return 0

        self.make_results_dir()
        self.write_env(servers, skipped)
        if self.pin.enabled and self.postmaster_pid:
            self.pg_affinity = pinning.PostgresAffinity(self.postmaster_pid, self.pin.other_cpus)
            self.pg_affinity.apply()

        if s.verify:
            self.verify_all(servers)
        else:
            self.say("[bench] verify: skipped (--no-verify)")

        progress = Progress(self.out, estimates)
        runs_file = self.results_dir / "runs.jsonl"
        warnings_total = 0
        for run in runs:
            label = (f"{run.server} items={run.items} c={run.concurrency} "
                     f"repeat {run.repeat + 1}/{s.repeats}")
            progress.say(f"[{run.index + 1}/{len(runs)}] {label} | elapsed "
                         f"{plan.format_duration(progress.elapsed())}, ETA "
                         f"{plan.format_duration(progress.eta(run.index))}")
            t0 = time.monotonic()
            record = self.run_ceiling(run) if run.is_ceiling else self.run_server(run)
            progress.finished(run.index, time.monotonic() - t0)
            with open(runs_file, "a") as handle:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            warnings_total += len(record["warnings"])
            progress.say("      " + self.summary_line(record))

        elapsed = time.monotonic() - t_start
        self.finish_env(elapsed, len(runs), warnings_total)
        self.point_latest()
        self.say(f"[bench] done in {plan.format_duration(elapsed)}: {len(runs)} runs, "
                 f"{warnings_total} warning(s); results in {self.results_dir}")
        if s.report:
            self.report()
        return 0

    # -- checks ---------------------------------------------------------------------------------
    def check(self) -> tuple[list[str], dict[str, list[Path]]]:
        s = self.settings
        try:
            servers, skipped = checks.select_servers(s.servers, self.registry)
            checks.tools(need_pgbench=s.ceiling, need_taskset=self.pin.enabled)
            checks.scenario(s.scenario)
            if s.verify or any(self.registry[n].real_scores for n in servers):
                checks.model_artifacts()
            self.facts = db.facts(self.dsn)
        except (checks.CheckError, db.DatabaseError) as exc:
            raise BenchError(str(exc), phase="checks") from None
        for name, missing in skipped.items():
            self.say(f"[bench] skipping {name}: {missing[0]} is missing "
                     f"(run `{checks.make_target_for(missing[0])}`)")
        f = self.facts
        for table, rng in (("users", f.users), ("items", f.items)):
            if not rng.contiguous:
                self.say(f"[bench] warning: {table} ids {rng.min}..{rng.max} are not contiguous "
                         f"({rng.count} rows): some random ids will be unknown")
        if self._db_is_local():
            from rankbench import pg
            self.postmaster_pid = pg.running_pid(pg.Cluster())
        self.say(f"[bench] checks: ok (PostgreSQL {f.server_version.split()[0]}, users "
                 f"{f.users.min}..{f.users.max}, items {f.items.min}..{f.items.max}, wrk, "
                 f"{'pgbench, ' if s.ceiling else ''}artifacts; postgres processes "
                 f"{'measured via postmaster ' + str(self.postmaster_pid) if self.postmaster_pid else 'NOT measured (not the private cluster)'})")
        return servers, skipped

    def _db_is_local(self) -> bool:
        return db.db_port(self.dsn) == config.PG_PORT and \
            db.db_host(self.dsn) in ("127.0.0.1", "localhost", "::1")

    # -- results folder -------------------------------------------------------------------------
    def make_results_dir(self) -> None:
        root = self.settings.results_root
        root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = root / stamp
        n = 1
        while path.exists():
            n += 1
            path = root / f"{stamp}-{n}"
        path.mkdir()
        self.results_dir = path
        self.logs_dir = path / "logs"
        self.logs_dir.mkdir()
        self.say(f"[bench] results: {path}")

    def point_latest(self) -> None:
        link = self.settings.results_root / "latest"
        tmp = self.settings.results_root / f".latest-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(self.results_dir.name)
        os.replace(tmp, link)

    def write_env(self, servers: list[str], skipped: dict[str, list[Path]]) -> None:
        tools = {"wrk": wrk.version(), "pgbench": pgbench.version() if self.settings.ceiling else None}
        server_info = {}
        for name in servers:
            spec = self.registry[name]
            server_info[name] = {
                "backend": spec.backend, "language": spec.language, "real_scores": spec.real_scores,
                "command": [db.redact(a) if a == self.dsn else a
                            for a in self.server_command(spec, spec.default_port)],
                "build": self.build_info(spec)}
        env = environment.collect(
            settings_json=dict(self.settings.as_json(), workers_effective=self.workers,
                               dsn=db.redact(self.dsn), skipped_servers={k: [str(p) for p in v]
                                                                      for k, v in skipped.items()}),
            pinning=self.pin.as_json(), db_version=self.facts.server_version, tool_versions=tools,
            servers=server_info)
        env["started_at"] = _utc()
        env["id_ranges"] = {"users": vars(self.facts.users), "items": vars(self.facts.items)}
        self.env = env
        self._write_json("env.json", env)

    def finish_env(self, elapsed: float, runs: int, warnings: int) -> None:
        self.env.update(finished_at=_utc(), elapsed_s=round(elapsed, 1), runs=runs,
                        warnings=warnings, complete=True)
        self._write_json("env.json", self.env)

    def _write_json(self, name: str, data: dict) -> None:
        tmp = self.results_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, self.results_dir / name)

    def build_info(self, spec: ServerSpec) -> dict:
        if spec.language == "rust":
            binary = next((Path(p) for p in spec.needs), config.CANDLE_BINARY)
            if self._cargo_release is None:
                self._cargo_release = environment.rust_build().get("profile_release", {})
            return {"kind": "cargo", "profile": "release" if "release" in binary.parts else "unknown",
                    "binary": str(binary), "sha256": self._file_digest(binary),
                    "profile_release": self._cargo_release, "RUSTFLAGS": os.environ.get("RUSTFLAGS")}
        return {"kind": spec.language, "interpreter": sys.executable}

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
        port = spec.default_port if port_is_free(spec.default_port) else free_port()
        argv = self.pin.prefix("server") + self.server_command(spec, port)
        stdout = self.logs_dir / f"{tag}.stdout.log"
        stderr = self.logs_dir / f"{tag}.stderr.log"
        t0 = time.monotonic()
        try:
            proc = self.supervisor.start(argv, name, stdout, stderr, cwd=config.ROOT)
        except OSError as exc:
            raise BenchError(f"cannot start {argv[0]}: {exc}", name, phase, stderr) from None
        server = RunningServer(name, spec, proc, port, stdout, stderr)
        deadline = t0 + self.settings.startup_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise BenchError(f"exited with code {code} before /health answered", name,
                                 f"{phase}: start", stderr)
            try:
                status, body = http_call(port, "GET", "/health", timeout=1.0)
                if status == 200:
                    server.health = json.loads(body)
                    break
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"/health did not answer 200 within "
                                 f"{self.settings.startup_timeout_s:.0f} s", name, f"{phase}: start",
                                 stderr)
            time.sleep(0.05)
        server.startup_s = time.monotonic() - t0
        self.supervisor.remember_tree(proc)
        tree = {p.pid for p in process_tree(proc.pid)}
        foreign = listeners(port) - tree
        if foreign:
            raise BenchError(f"port {port} is also served by pid(s) {sorted(foreign)}, which the "
                             f"harness did not start; stop them first", name, f"{phase}: start", stderr)
        return server

    def stop_server(self, server: RunningServer) -> tuple[int | None, float]:
        t0 = time.monotonic()
        code = self.supervisor.stop(server.proc, grace_s=10.0)
        return code, time.monotonic() - t0

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
                self._write_json("verify.json", {"ok": False, "servers": [r.as_json() for r in reports],
                                                 "failure": str(exc)})
                raise BenchError(str(exc), name, "verify", server.stderr) from None
            finally:
                self.stop_server(server)
            reports.append(report)
            what = (f"max |score - reference| {report.max_abs_diff:.1e}, {report.near_tie_swaps} "
                    f"near-tie swap(s)" if report.real_scores else "floor: shape and order only")
            self.say(f"[bench] verify: {name} ok ({report.requests} requests, {report.items_checked} "
                     f"items; {what}; {time.monotonic() - t0:.1f} s)")
        self._write_json("verify.json", {"ok": True, "requests": len(requests),
                                         "tolerance": s.verify_tolerance, "seed": s.seed,
                                         "servers": [r.as_json() for r in reports]})

    # -- one measured server run ----------------------------------------------------------------
    def script_args(self, run: plan.Run) -> dict[str, int]:
        f = self.facts
        return {"items": run.items, "top_k": self.settings.top_k, "user_min": f.users.min,
                "user_max": f.users.max, "item_min": f.items.min, "item_max": f.items.max,
                "seed": self.settings.seed + run.repeat}

    def wrk_run(self, server: RunningServer, run: plan.Run, seconds: int, tag: str,
                phase: str = "run: load") -> tuple[dict, Usage, Path]:
        s = self.settings
        argv = self.pin.prefix("other") + wrk.command(
            f"http://{HOST}:{server.port}/rank", run.scenario, threads=s.wrk_threads,
            connections=run.concurrency, duration_s=seconds, timeout_s=s.wrk_timeout_s,
            script_args=self.script_args(run))
        out = self.logs_dir / f"{tag}.wrk.txt"
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
        started_at = _utc()
        fairness = self._fairness(server.spec)  # the binary just started (its digest, for rebuilds)
        warnings: list[str] = []
        try:
            if s.warmup_s > 0:
                warm, _, _ = self.wrk_run(server, run, s.warmup_s, tag + ".warmup", "run: warm-up")
                bad = sum(warm["errors"].values())
                if bad:
                    warnings.append(f"warm-up had {bad} error(s)/non-2xx: {warm['errors']}")
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
            data, usage, wrk_out = self.wrk_run(server, run, s.duration_s, tag)
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
            ports = self._db_client_ports(server_pid)
            statements = db.statements_of(self.dsn, ports)
            pss_mb = _pss_mb(process_tree(server_pid))
            db_pss_mb = _pss_mb(pg_groups()["db"]) if pg_groups is not None else None
            threads = _threads(process_tree(server_pid))
        finally:
            exit_code, stop_s = self.stop_server(server)
        if exit_code not in (0, None):
            warnings.append(f"server exit code {exit_code} after SIGTERM (expected 0)")

        client = wrk.client_record(data, run.concurrency)
        requests = client["requests"]
        resources = self._resources(sampled, requests, rusage1, rusage0)
        resources["server"]["pss_end_mb"] = pss_mb
        resources["server"]["threads_end"] = threads
        if resources.get("db"):
            # RSS counts shared_buffers pages once per backend; PSS splits them fairly.
            resources["db"]["pss_end_mb"] = db_pss_mb
        # wrk's CPU during the load (rank.lua reports it); its whole life from wait4 otherwise.
        window_cpu = wrk.window_cpu_s(data)
        load_cpu = window_cpu if window_cpu is not None else usage.cpu_s
        resources["load"] = {"cpu_s": round(load_cpu, 4),
                             "cpu_us_per_req": round(load_cpu / requests * 1e6, 2) if requests else None,
                             "rss_peak_mb": round(usage.maxrss_mb, 1),
                             "process_cpu_s": round(usage.cpu_s, 4), "user_s": round(usage.user_s, 4),
                             "system_s": round(usage.system_s, 4),
                             "measured": "wrk os.clock() init..done" if window_cpu is not None
                             else "wait4 (whole process)"}
        self._unattributed(resources)
        load_share = load_cpu / (client["duration_s"] * s.wrk_threads) if client["duration_s"] else 0
        if load_share > WRK_SATURATED:
            warnings.append(f"wrk saturated: it used {load_share:.0%} of a core per thread "
                            f"(> {WRK_SATURATED:.0%}); the load generator may be the bottleneck")
        errors = sum(v for k, v in client["errors"].items() if k != "status")
        if errors:
            warnings.append(f"wrk socket errors: {client['errors']}")
        if client["non2xx"]:
            warnings.append(f"{client['non2xx']} non-2xx responses")
        if requests == 0:
            warnings.append("no request completed")
        unrecorded = requests - client["histogram_count"]  # latencies above --timeout are not kept
        if unrecorded < 0 or unrecorded > client["errors"]["timeout"]:
            warnings.append(f"latency histogram holds {client['histogram_count']} values for "
                            f"{requests} requests")
        if stats.get("errors"):
            warnings.append(f"server counted {stats['errors']} error response(s)")
        if stats.get("workers") not in (None, self.workers):
            warnings.append(f"server reports {stats.get('workers')} workers, {self.workers} requested")
        if stats.get("backend") not in (None, server.spec.backend):
            warnings.append(f"server reports backend {stats.get('backend')!r}, registry says "
                            f"{server.spec.backend!r}")
        contract = pgbench.statements_as_prepared(pgbench.script_text(2))
        odd = [q for q in statements if q not in contract]
        if odd:
            warnings.append(f"server sent statements other than the contract's: {odd}")
        warnings += self._foreign_warning(resources)
        built = self.env["servers"].get(run.server, {}).get("build", {})
        if built.get("sha256") and fairness["build"].get("sha256") != built["sha256"]:
            warnings.append(f"{fairness['build']['binary']} changed since the study started (rebuilt "
                            f"during the run): this run measured another binary")

        record = self._base_record(run, started_at)
        record.update(
            server=run.server, backend=server.spec.backend, workers=self.workers,
            pool_size=s.pool_size, client=client, stages=stats.get("stages", {}),
            resources=resources,
            server_info={"health": server.health, "server": stats.get("server"),
                         "backend": stats.get("backend"), "workers": stats.get("workers"),
                         "requests": stats.get("requests"), "errors": stats.get("errors"),
                         "port": server.port, "startup_s": round(server.startup_s, 3),
                         "stop_s": round(stop_s, 3), "exit_code": exit_code,
                         "stderr_log": str(server.stderr.relative_to(self.results_dir)),
                         "wrk_log": str(wrk_out.relative_to(self.results_dir))},
            db_statements=statements,
            fairness=fairness,
            warnings=warnings)
        return record

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

    def _resources(self, sampled, requests: int, rusage1, rusage0) -> dict:
        out = {}
        for name in ("server", "db", "db_foreign"):
            group = sampled.groups.get(name)
            if group is not None:
                out[name] = group.as_record(requests)
        if "db" not in out:
            out["db"] = None
        harness_cpu = (rusage1.user + rusage1.system) - (rusage0.user + rusage0.system)
        out["harness"] = {"cpu_s": round(harness_cpu, 4), "sampler_samples": sampled.samples,
                          "window_s": round(sampled.wall_s, 3)}
        out["machine"] = {"busy_cpu_s": round(sampled.machine_busy_cpu_s, 3),
                          "irq_softirq_cpu_s": round(sampled.machine_irq_cpu_s, 3),
                          "steal_cpu_s": round(sampled.machine_steal_cpu_s, 3),
                          "cores": psutil.cpu_count()}
        return out

    @staticmethod
    def _unattributed(resources: dict) -> None:
        """Process CPU time on the machine not explained by the processes measured: other
        processes (another build, another test), and the small sampling gaps of short-lived ones."""
        groups = [resources.get(k) or {} for k in ("server", "db", "db_foreign", "load", "harness")]
        known = sum(g.get("process_cpu_s", g.get("cpu_s", 0.0)) for g in groups)
        machine = resources["machine"]
        machine["unattributed_cpu_s"] = round(machine["busy_cpu_s"] - known, 3)

    def _foreign_warning(self, resources: dict) -> list[str]:
        """Activity that is not the run's own: other database clients, other processes."""
        out = []
        window = resources["harness"]["window_s"] or 1.0
        if not self.postmaster_pid:
            out.append("database processes not measured (not the local private cluster)")
        foreign = resources.get("db_foreign")
        if foreign and foreign["cpu_s"] > 0.01 * window:
            out.append(f"other clients used the database during the run ({foreign['cpu_s']:.2f} CPU s "
                       f"in {foreign['processes']} backend(s)); not counted in `db`")
        machine = resources["machine"]
        capacity = machine["cores"] * window
        other = machine.get("unattributed_cpu_s", 0.0) + (foreign["cpu_s"] if foreign else 0.0)
        if other > OTHER_LOAD_SHARE * capacity:
            out.append(f"the machine was busy with other work: {other:.1f} CPU s "
                       f"({other / capacity:.0%} of {machine['cores']} cores) not used by this run")
        return out

    def _fairness(self, spec: ServerSpec | None) -> dict:
        return {"workers": self.workers, "pool_size": self.settings.pool_size,
                "wrk_threads": self.settings.wrk_threads,
                "intra_op_threads": 1,  # contract: one intra-op thread per worker in every runtime
                "build": self.build_info(spec) if spec else None, "pinning": self.pin.as_json()}

    def _base_record(self, run: plan.Run, started_at: str) -> dict:
        s = self.settings
        return {"schema": SCHEMA, "server": run.server, "backend": None, "workers": None,
                "pool_size": None, "scenario": run.scenario, "candidates": run.items,
                "top_k": s.top_k, "concurrency": run.concurrency, "duration_s": float(s.duration_s),
                "warmup_s": float(s.warmup_s), "repeat": run.repeat, "started_at": started_at,
                "seed": s.seed + run.repeat}

    # -- the database ceiling -------------------------------------------------------------------
    def ceiling_clients(self, run: plan.Run) -> int:
        """pgbench connections. A server never runs more than --pool-size transactions at once, and on
        a small machine PostgreSQL does more with fewer backends, so by default the ceiling runs at
        that database concurrency: it is then an upper bound for every server, not a lower one."""
        if self.settings.ceiling_clients == "concurrency":
            return run.concurrency
        return min(run.concurrency, self.settings.pool_size)

    def run_ceiling(self, run: plan.Run) -> dict:
        s, f = self.settings, self.facts
        tag = f"{run.index + 1:03d}-db-ceiling-i{run.items}-c{run.concurrency}-r{run.repeat}"
        started_at = _utc()
        warnings: list[str] = []
        pool = pgbench.ARRAY_POOL
        script = pgbench.script_text(pool)
        arrays = pgbench.item_arrays(run.items, pool, f.items.min, f.items.max, s.seed + run.repeat)
        out = self.logs_dir / f"{tag}.pgbench.txt"
        with tempfile.TemporaryDirectory(prefix="rankbench-pgbench-") as tmp:
            script_path = Path(tmp) / "ceiling.sql"
            script_path.write_text(script)
            shutil.copy(script_path, self.logs_dir / f"{tag}.pgbench.sql")
            prefix = Path(tmp) / "tx"
            clients = self.ceiling_clients(run)
            argv = self.pin.prefix("other") + pgbench.command(
                self.dsn, script_path, clients=clients, seconds=s.warmup_s + s.duration_s,
                log_prefix=prefix, arrays=arrays, user_min=f.users.min, user_max=f.users.max,
                seed=s.seed + run.repeat)
            launched = time.time()
            proc = self.supervisor.start(argv, "pgbench", out, out)
            # Warm-up and measurement share one invocation (and so its connections and their
            # cached plans); the warm-up's transactions are dropped from the log by time.
            while time.time() < launched + s.warmup_s:
                if proc.poll() is not None:
                    raise BenchError(f"pgbench exited with code {proc.returncode} during warm-up",
                                     plan.CEILING, "ceiling: warm-up", out)
                time.sleep(0.02)
            pg_groups = self.postgres_groups(proc.pid)
            try:
                load_cpu0 = sum(psutil.Process(proc.pid).cpu_times()[:2])
            except psutil.Error:
                raise BenchError("pgbench ended during warm-up", plan.CEILING, "ceiling: warm-up",
                                 out) from None
            sampler = self.active_sampler = ResourceSampler(
                lambda: pg_groups() if pg_groups else {})
            rusage0 = os.times()
            window_start = time.time()
            sampler.start()
            try:
                usage = self.supervisor.wait_measured(proc, timeout_s=s.duration_s + 120)
            except TimeoutError as exc:
                raise BenchError(str(exc), plan.CEILING, "ceiling: load", out) from None
            sampled = sampler.stop()
            self.active_sampler = None
            rusage1 = os.times()
            text = out.read_text(errors="replace")
            if proc.returncode != 0:
                raise BenchError(f"pgbench exited with code {proc.returncode}", plan.CEILING,
                                 "ceiling: load", out)
            try:
                rows = pgbench.read_logs(prefix)
            except pgbench.PgbenchError as exc:
                raise BenchError(str(exc), plan.CEILING, "ceiling: load", out) from None
        parsed = pgbench.parse_stdout(text)
        measured = [t for t, _ in rows if t >= window_start]
        window_end = max(measured) if measured else window_start
        hist = pgbench.window(rows, window_start, window_end + 1e-6)
        requests = histogram.count(hist)
        duration = window_end - window_start
        latency = histogram.summary(hist)
        latency.pop("min", None)
        client = {"tool": "pgbench", "requests": requests,
                  "rps": round(requests / duration, 2) if duration > 0 else 0.0, "non2xx": 0,
                  "errors": {"connect": 0, "read": 0, "write": 0, "status": parsed["failed"],
                             "timeout": 0},
                  "latency_us": latency, "histogram": hist, "histogram_count": requests,
                  "duration_s": round(duration, 6), "clients": clients, "threads": 1,
                  "connections": clients, "clients_rule": s.ceiling_clients,
                  "transactions_total": len(rows),
                  "processed_reported": parsed["processed"], "array_pool": pool,
                  "statements": sorted(pgbench.statements_as_prepared(script)),
                  "result_format": "text"}
        if parsed["failed"]:
            warnings.append(f"{parsed['failed']} failed transaction(s)")
        if parsed["processed"] is not None and parsed["processed"] != len(rows):
            warnings.append(f"pgbench reported {parsed['processed']} transactions, its log holds "
                            f"{len(rows)}")
        load_cpu = max(0.0, usage.cpu_s - load_cpu0)
        resources = self._resources(sampled, requests, rusage1, rusage0)
        resources["server"] = None
        resources["load"] = {"cpu_s": round(load_cpu, 4),
                             "cpu_us_per_req": round(load_cpu / requests * 1e6, 2) if requests else None,
                             "rss_peak_mb": round(usage.maxrss_mb, 1), "measured": "wait4 - warm-up"}
        self._unattributed(resources)
        if duration and load_cpu / duration > WRK_SATURATED:
            warnings.append(f"pgbench saturated: it used {load_cpu / duration:.0%} of a core "
                            f"(-j 1); the load generator may be the bottleneck")
        if requests == 0:
            warnings.append("no transaction completed in the measured window")
        warnings += self._foreign_warning(resources)
        record = self._base_record(run, started_at)
        record.update(server=plan.CEILING, backend="postgres", workers=None,
                      pool_size=clients, client=client, stages={}, resources=resources,
                      server_info={"postgres": self.facts.server_version,
                                   "pgbench_log": str(out.relative_to(self.results_dir))},
                      fairness=self._fairness(None), warnings=warnings)
        return record

    # -- output ---------------------------------------------------------------------------------
    @staticmethod
    def summary_line(record: dict) -> str:
        c = record["client"]
        lat = c.get("latency_us") or {}
        res = record["resources"]

        def per_req(name):
            group = res.get(name)
            return f"{group['cpu_us_per_req']:.0f}" if group and group.get("cpu_us_per_req") else "-"

        line = (f"{c['rps']:.1f} req/s, p50 {lat.get('p50', 0) / 1000:.2f} ms, p99 "
                f"{lat.get('p99', 0) / 1000:.2f} ms; CPU us/req server {per_req('server')}, db "
                f"{per_req('db')}, load {per_req('load')}; {c['requests']} requests, "
                f"{sum(c['errors'].values())} errors")
        if record["warnings"]:
            line += f"; WARNING: {'; '.join(record['warnings'])}"
        return line

    def report(self) -> None:
        analysis_main = config.ROOT / "analysis" / "__main__.py"
        if not analysis_main.exists():
            self.say("[bench] report: skipped (the analysis package is not there yet)")
            return
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


def _utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
