"""The database ceilings: what PostgreSQL sustains for the servers' own database work, no HTTP, no model.

Two participants of every round:
- `db-ceiling`: rankbench-ceiling (candle_server/src/bin/ceiling.rs, tokio-postgres in the same cargo
  workspace as the Rust server, with the server's own SQL and pool code): per transaction one pooled
  connection, the contract's two prepared statements with binary results, the features decoded;
  pool-size connections; the same id sequence as wrk_scripts/rank.lua (same generator, same seed).
  This is the upper bound of every server: a server does this work and more.
- `db-ceiling-pgbench`: pgbench with the same two statements (bench/pgbench.py), results in text
  format. A second, labelled reference: text output costs the database more than binary, so it is
  not an upper bound (a server has exceeded it).

Both run the warm-up and the measured window in one invocation (the same connections and cached
plans, like a server's pool), with the cluster's processes sampled during the measured window.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from rankbench import config, contract, histogram

from bench import pgbench, plan, records, wrk
from bench.procs import Supervisor, Usage
from bench.sampler import ResourceSampler
from bench.serverproc import BenchError


class CeilingError(RuntimeError):
    pass


def binary() -> Path:
    return config.CEILING_BINARY


def ceiling_command(dsn: str, *, connections: int, clients: int, warmup_s: int, duration_s: int,
                    items: int, user_range: tuple[int, int], item_range: tuple[int, int],
                    seed: int) -> list[str]:
    return [str(binary()), "--dsn", dsn, "--connections", str(connections), "--clients",
            str(clients), "--warmup", str(warmup_s), "--duration", str(duration_s),
            "--items", str(items), "--user-min", str(user_range[0]), "--user-max",
            str(user_range[1]), "--item-min", str(item_range[0]), "--item-max",
            str(item_range[1]), "--seed", str(seed)]


def parse_ceiling_output(text: str) -> dict:
    """The one JSON line rankbench-ceiling prints at the end."""
    try:
        return wrk.last_json_line(text, "rankbench-ceiling",
                                  ("transactions", "duration_us", "histogram", "errors"))
    except ValueError as exc:
        raise CeilingError(str(exc)) from None


def ceiling_client_record(data: dict) -> dict:
    hist = [[int(v), int(c)] for v, c in data["histogram"]]
    requests = int(data["transactions"])
    duration = int(data["duration_us"]) / 1e6
    latency = histogram.summary(hist)
    latency.pop("min", None)
    errors = int(data["errors"])
    return {"tool": "rankbench-ceiling", "requests": requests,
            "rps": round(requests / duration, 2) if duration > 0 else 0.0, "non2xx": errors,
            "errors": {"connect": 0, "read": 0, "write": 0, "status": errors, "timeout": 0},
            "latency_us": latency, "histogram": hist, "histogram_count": histogram.count(hist),
            "duration_s": round(duration, 6), "clients": int(data.get("clients", 0)),
            "connections": int(data.get("connections", 0)), "threads": 1,
            "statements": list(contract.STATEMENTS), "result_format": "binary"}


@dataclass
class CeilingContext:
    """What a ceiling run needs from the study (the runner's state, passed explicitly)."""
    supervisor: Supervisor
    dsn: str
    logs: Path
    relative: Callable[[Path], str]
    pin_prefix: list[str]
    postgres_groups: Callable[[int], object]
    pool_size: int
    clients_rule: str
    settings: object
    facts: object
    server_version: str
    fairness: dict
    db_measured: bool


def clients_for(ctx: CeilingContext, run: plan.Run) -> int:
    """Database clients. A server never runs more than --pool-size transactions at once, and on a
    small machine PostgreSQL does more with fewer backends, so by default a ceiling runs at that
    database concurrency: an upper bound for every server, not a lower one."""
    if ctx.clients_rule == "concurrency":
        return run.concurrency
    return min(run.concurrency, ctx.pool_size)


def _measure(ctx: CeilingContext, argv: list[str], name: str, out: Path, warmup_s: float,
             timeout_s: float):
    """Start the client, let the warm-up pass, sample the cluster until it exits."""
    launched = time.time()
    proc = ctx.supervisor.start(argv, name, out, out)
    while time.time() < launched + warmup_s:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} during warm-up", name,
                             "ceiling: warm-up", out)
        time.sleep(0.02)
    pg_groups = ctx.postgres_groups(proc.pid)
    try:
        load_cpu0 = sum(psutil.Process(proc.pid).cpu_times()[:2])
    except psutil.Error:
        raise BenchError(f"{name} ended during warm-up", name, "ceiling: warm-up", out) from None
    sampler = ResourceSampler(lambda: pg_groups() if pg_groups else {})
    rusage0 = os.times()
    window_start = time.time()
    sampler.start()
    try:
        usage: Usage = ctx.supervisor.wait_measured(proc, timeout_s=timeout_s)
    except TimeoutError as exc:
        sampler.stop()
        raise BenchError(str(exc), name, "ceiling: load", out) from None
    sampled = sampler.stop()
    rusage1 = os.times()
    if proc.returncode != 0:
        raise BenchError(f"{name} exited with code {proc.returncode}", name, "ceiling: load", out)
    harness_cpu = (rusage1.user + rusage1.system) - (rusage0.user + rusage0.system)
    return usage, sampled, harness_cpu, max(0.0, usage.cpu_s - load_cpu0), window_start


def _record(ctx: CeilingContext, run: plan.Run, started_at: str, client: dict, usage: Usage,
            sampled, harness_cpu: float, load_cpu: float, failed: int, info: dict) -> dict:
    requests = client["requests"]
    resources = records.resources(sampled, requests, harness_cpu, psutil.cpu_count(),
                                  client["duration_s"])
    resources["server"] = None
    resources["load"] = records.load_record(load_cpu, requests, client["duration_s"], usage,
                                            "wait4 - warm-up")
    records.add_unattributed(resources)
    warnings = records.ceiling_warnings(client, load_cpu, failed, client["tool"])
    warnings += records.foreign_warnings(resources, ctx.db_measured)
    record = records.base_record(run, ctx.settings, started_at)
    record.update(server=run.server, backend="postgres", workers=None,
                  pool_size=client["connections"], client=client, stages={}, resources=resources,
                  server_info={"postgres": ctx.server_version, **info}, fairness=ctx.fairness,
                  warnings=warnings)
    return records.finish(record)


def run_ceiling(ctx: CeilingContext, run: plan.Run, tag: str, started_at: str) -> dict:
    s, f = ctx.settings, ctx.facts
    if not binary().exists():
        raise BenchError(f"{binary()} is missing; run `make build`", run.server, "ceiling")
    clients = clients_for(ctx, run)
    argv = ctx.pin_prefix + ceiling_command(
        ctx.dsn, connections=clients, clients=clients, warmup_s=s.warmup_s,
        duration_s=s.duration_s, items=run.items, user_range=(f.users.min, f.users.max),
        item_range=(f.items.min, f.items.max), seed=s.seed + run.repeat)
    out = ctx.logs / f"{tag}.ceiling.txt"
    usage, sampled, harness_cpu, load_cpu, _ = _measure(
        ctx, argv, "rankbench-ceiling", out, s.warmup_s, s.warmup_s + s.duration_s + 120)
    try:
        data = parse_ceiling_output(out.read_text(errors="replace"))
    except CeilingError as exc:
        raise BenchError(str(exc), run.server, "ceiling: load", out) from None
    client = ceiling_client_record(data)
    client["clients_rule"] = ctx.clients_rule
    return _record(ctx, run, started_at, client, usage, sampled, harness_cpu, load_cpu,
                   int(data["errors"]), {"ceiling_log": ctx.relative(out)})


def run_pgbench(ctx: CeilingContext, run: plan.Run, tag: str, started_at: str) -> dict:
    s, f = ctx.settings, ctx.facts
    pool = pgbench.ARRAY_POOL
    script = pgbench.script_text(pool)
    arrays = pgbench.item_arrays(run.items, pool, f.items.min, f.items.max, s.seed + run.repeat)
    out = ctx.logs / f"{tag}.pgbench.txt"
    clients = clients_for(ctx, run)
    with tempfile.TemporaryDirectory(prefix="rankbench-pgbench-") as tmp:
        script_path = Path(tmp) / "ceiling.sql"
        script_path.write_text(script)
        shutil.copy(script_path, ctx.logs / f"{tag}.pgbench.sql")
        prefix = Path(tmp) / "tx"
        argv = ctx.pin_prefix + pgbench.command(
            ctx.dsn, script_path, clients=clients, seconds=s.warmup_s + s.duration_s,
            log_prefix=prefix, arrays=arrays, user_min=f.users.min, user_max=f.users.max,
            seed=s.seed + run.repeat)
        usage, sampled, harness_cpu, load_cpu, window_start = _measure(
            ctx, argv, "pgbench", out, s.warmup_s, s.duration_s + 120)
        try:
            rows = pgbench.read_logs(prefix)
        except pgbench.PgbenchError as exc:
            raise BenchError(str(exc), run.server, "ceiling: load", out) from None
    parsed = pgbench.parse_stdout(out.read_text(errors="replace"))
    # The warm-up's transactions are dropped from the log by their completion time.
    measured = [t for t, _ in rows if t >= window_start]
    window_end = max(measured) if measured else window_start
    hist = pgbench.window(rows, window_start, window_end + 1e-6)
    requests = histogram.count(hist)
    duration = window_end - window_start
    latency = histogram.summary(hist)
    latency.pop("min", None)
    client = {"tool": "pgbench", "requests": requests,
              "rps": round(requests / duration, 2) if duration > 0 else 0.0,
              "non2xx": parsed["failed"],
              "errors": {"connect": 0, "read": 0, "write": 0, "status": parsed["failed"],
                         "timeout": 0},
              "latency_us": latency, "histogram": hist, "histogram_count": requests,
              "duration_s": round(duration, 6), "clients": clients, "threads": 1,
              "connections": clients, "clients_rule": ctx.clients_rule,
              "transactions_total": len(rows), "processed_reported": parsed["processed"],
              "array_pool": pool, "statements": sorted(pgbench.statements_as_prepared(script)),
              "result_format": "text"}
    record = _record(ctx, run, started_at, client, usage, sampled, harness_cpu, load_cpu,
                     parsed["failed"], {"pgbench_log": ctx.relative(out)})
    if parsed["processed"] is not None and parsed["processed"] != len(rows):
        record["warnings"].append(f"pgbench reported {parsed['processed']} transactions, its log "
                                  f"holds {len(rows)}")
    return record


RUNNERS = {plan.CEILING: run_ceiling, plan.PGBENCH_CEILING: run_pgbench}
