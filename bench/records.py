"""Building a runs.jsonl record from what a run measured: pure functions, testable without processes.

The runner gathers raw facts (wrk's parsed line, the sampler's result, /stats, wait4 usage, the
statements the server's backends ran); everything that turns them into figures, warnings and the
validity verdict is here, so each rule can be tested on hand-made inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rankbench import contract, thresholds


# -- resources ----------------------------------------------------------------------------------
def group_record(group, requests: int, load_window_s: float | None) -> dict:
    """One sampled process group; cores used over the measured load window, not the harness window
    (which also covers the load generator's start-up and its end-of-run histogram dump)."""
    out = group.as_record(requests)
    out["cores_used"] = cores_used(out["cpu_s"], load_window_s)
    return out


def cores_used(cpu_s: float | None, load_window_s: float | None) -> float | None:
    if cpu_s is None or not load_window_s:
        return None
    return round(cpu_s / load_window_s, 4)


def resources(sampled, requests: int, harness_cpu_s: float, cores: int,
              load_window_s: float | None) -> dict:
    out: dict = {}
    for name in ("server", "db", "db_foreign"):
        group = sampled.groups.get(name)
        if group is not None:
            out[name] = group_record(group, requests, load_window_s)
    if "db" not in out:
        out["db"] = None
    out["harness"] = {"cpu_s": round(harness_cpu_s, 4), "sampler_samples": sampled.samples,
                      "window_s": round(sampled.wall_s, 3), "load_window_s": load_window_s}
    out["machine"] = {"busy_cpu_s": round(sampled.machine_busy_cpu_s, 3),
                      "irq_softirq_cpu_s": round(sampled.machine_irq_cpu_s, 3),
                      "steal_cpu_s": round(sampled.machine_steal_cpu_s, 3), "cores": cores}
    return out


def load_record(cpu_s: float, requests: int, load_window_s: float | None, usage,
                measured: str) -> dict:
    return {"cpu_s": round(cpu_s, 4),
            "cpu_us_per_req": round(cpu_s / requests * 1e6, 2) if requests else None,
            "cores_used": cores_used(cpu_s, load_window_s),
            "rss_peak_mb": round(usage.maxrss_mb, 1), "process_cpu_s": round(usage.cpu_s, 4),
            "user_s": round(usage.user_s, 4), "system_s": round(usage.system_s, 4),
            "measured": measured}


def add_unattributed(resources_: dict) -> None:
    """Process CPU time on the machine not explained by the processes measured: other processes
    (another build, another test), and the small sampling gaps of short-lived ones."""
    groups = [resources_.get(k) or {} for k in ("server", "db", "db_foreign", "load", "harness")]
    known = sum(g.get("process_cpu_s", g.get("cpu_s", 0.0)) for g in groups)
    machine = resources_["machine"]
    machine["unattributed_cpu_s"] = round(machine["busy_cpu_s"] - known, 3)


def foreign_warnings(resources_: dict, db_measured: bool) -> list[str]:
    """Activity that is not the run's own: other database clients, other processes."""
    out = []
    window = resources_["harness"]["window_s"] or 1.0
    if not db_measured:
        out.append("database processes not measured (not the local private cluster)")
    foreign = resources_.get("db_foreign")
    if foreign and foreign["cpu_s"] > thresholds.FOREIGN_DB_SHARE * window:
        out.append(f"other clients used the database during the run ({foreign['cpu_s']:.2f} CPU s "
                   f"in {foreign['processes']} backend(s)); not counted in `db`")
    machine = resources_["machine"]
    capacity = machine["cores"] * window
    other = machine.get("unattributed_cpu_s", 0.0) + (foreign["cpu_s"] if foreign else 0.0)
    if other > thresholds.OTHER_LOAD_SHARE * capacity:
        out.append(f"the machine was busy with other work: {other:.1f} CPU s "
                   f"({other / capacity:.0%} of {machine['cores']} cores) not used by this run")
    return out


# -- goodput and validity -----------------------------------------------------------------------
def add_goodput(client: dict) -> None:
    """2xx responses and their rate beside every response's (`rps`)."""
    ok = max(0, client["requests"] - client["non2xx"])
    client["ok"] = ok
    duration = client.get("duration_s") or 0.0
    client["goodput_rps"] = round(ok / duration, 2) if duration > 0 else None


def validity(client: dict) -> tuple[bool, list[str]]:
    """A run with any non-2xx response or socket error measured something else than the contract's
    work (error answers are cheaper or dearer than answers): it is invalid, not just warned about."""
    reasons = []
    if client.get("non2xx"):
        reasons.append(f"{client['non2xx']} non-2xx response(s)")
    socket_errors = {k: v for k, v in client["errors"].items() if k != "status" and v}
    if socket_errors:
        reasons.append(f"socket errors {socket_errors}")
    if client["requests"] == 0:
        reasons.append("no request completed")
    return not reasons, reasons


# -- the warning rules of a server run -------------------------------------------------------------
@dataclass
class ServerRunFacts:
    client: dict
    stats: dict
    workers: int
    backend: str
    load_cpu_s: float
    wrk_threads: int
    statements: list[str]
    contract_statements: set[str]
    exit_code: int | None
    warmup_errors: dict = field(default_factory=dict)
    build_sha_now: str | None = None
    build_sha_at_start: str | None = None
    binary: str | None = None
    tool: str = "wrk"              # the load generator, as the warnings name it


def server_run_warnings(f: ServerRunFacts) -> list[str]:
    warnings = []
    client = f.client
    requests = client["requests"]
    bad = sum(f.warmup_errors.values())
    if bad:
        warnings.append(f"warm-up had {bad} error(s)/non-2xx: {f.warmup_errors}")
    if f.exit_code not in (0, None):
        warnings.append(f"server exit code {f.exit_code} after SIGTERM (expected 0)")
    duration = client.get("duration_s") or 0.0
    load_share = f.load_cpu_s / (duration * f.wrk_threads) if duration else 0.0
    if load_share > thresholds.LOAD_SATURATED_CORES:
        warnings.append(f"{f.tool} saturated: it used {load_share:.0%} of a core per thread "
                        f"(> {thresholds.LOAD_SATURATED_CORES:.0%}); the load generator may be the "
                        f"bottleneck")
    errors = sum(v for k, v in client["errors"].items() if k != "status")
    if errors:
        warnings.append(f"{f.tool} socket errors: {client['errors']}")
    if client["non2xx"]:
        warnings.append(f"{client['non2xx']} non-2xx responses")
    if requests == 0:
        warnings.append("no request completed")
    unrecorded = requests - client["histogram_count"]  # latencies above --timeout are not kept
    if unrecorded < 0 or unrecorded > client["errors"]["timeout"]:
        warnings.append(f"latency histogram holds {client['histogram_count']} values for "
                        f"{requests} requests")
    if f.stats.get("errors"):
        warnings.append(f"server counted {f.stats['errors']} error response(s)")
    if f.stats.get("workers") not in (None, f.workers):
        warnings.append(f"server reports {f.stats.get('workers')} workers, {f.workers} requested")
    if f.stats.get("backend") not in (None, f.backend):
        warnings.append(f"server reports backend {f.stats.get('backend')!r}, registry says "
                        f"{f.backend!r}")
    odd = [q for q in f.statements if q not in f.contract_statements]
    if odd:
        warnings.append(f"server sent statements other than the contract's: {odd}")
    if f.build_sha_at_start and f.build_sha_now != f.build_sha_at_start:
        warnings.append(f"{f.binary} changed since the study started (rebuilt during the run): "
                        f"this run measured another binary")
    return warnings


def ceiling_warnings(client: dict, load_cpu_s: float, failed: int, tool: str) -> list[str]:
    warnings = []
    if failed:
        warnings.append(f"{failed} failed transaction(s)")
    duration = client.get("duration_s") or 0.0
    if duration and load_cpu_s / duration > thresholds.LOAD_SATURATED_CORES:
        warnings.append(f"{tool} saturated: it used {load_cpu_s / duration:.0%} of a core; the "
                        f"load generator may be the bottleneck")
    if client["requests"] == 0:
        warnings.append("no transaction completed in the measured window")
    return warnings


def finish(record: dict) -> dict:
    """Goodput and the validity verdict, the last step of every record."""
    add_goodput(record["client"])
    record["valid"], record["invalid_reasons"] = validity(record["client"])
    return record


def base_record(run, settings, started_at: str) -> dict:
    return {"schema": contract.SCHEMA, "server": run.server, "backend": None, "workers": None,
            "pool_size": None, "scenario": run.scenario, "candidates": run.items,
            "top_k": settings.top_k, "concurrency": run.concurrency,
            "duration_s": float(settings.duration_s), "warmup_s": float(settings.warmup_s),
            "repeat": run.repeat, "position": run.position, "order": list(run.order),
            "started_at": started_at, "seed": settings.seed + run.repeat}


# -- output -------------------------------------------------------------------------------------
def summary_line(record: dict) -> str:
    c = record["client"]
    lat = c.get("latency_us") or {}
    res = record["resources"]

    def per_req(name):
        group = res.get(name)
        value = group.get("cpu_us_per_req") if group else None
        return f"{value:.0f}" if value is not None else "n/a"

    def ms(key):
        return f"{lat[key] / 1000:.2f} ms" if key in lat else "n/a"

    goodput = c.get("goodput_rps")
    line = (f"{goodput if goodput is not None else 0:.1f} ok/s ({c['rps']:.1f} responses/s), "
            f"p50 {ms('p50')}, p99 {ms('p99')}; CPU us/req server {per_req('server')}, db "
            f"{per_req('db')}, load {per_req('load')}; {c['requests']} requests, "
            f"{sum(c['errors'].values())} errors")
    if not record.get("valid", True):
        line += f"; INVALID: {'; '.join(record['invalid_reasons'])}"
    if record["warnings"]:
        line += f"; WARNING: {'; '.join(record['warnings'])}"
    return line
