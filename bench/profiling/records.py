"""profile.jsonl records, built by pure functions from what a profiling run measured.

One record per (server, items, concurrency, repeat):
  server, backend, facets, role, items, concurrency, repeat, top_k, duration_s, warmup_s,
  workers, pool_size, seed, started_at, python_frames ("native" | "py-spy" | "perf-trampoline"),
  order                    the windows in the order they ran
  windows                  {unprofiled, perf, py-spy (CPython < 3.12 only)}, each: client (rps,
                           goodput, latency percentiles, errors), resources (server, db, load:
                           cpu_s, cpu_us_per_req, user_s, system_s; machine), window (monotonic
                           seconds), profilers (their own CPU), valid, warnings
  overhead                 {perf, py-spy}: requests/s and server CPU per request vs unprofiled
  profile                  samples, sampled_cpu_s, sampled_vs_measured_cpu (perf's samples over
                           the perf window's measured CPU), named_share, cpu_us_per_req_basis
                           and _perf_window, categories {name: label, samples, share,
                           cpu_us_per_req (share x the unprofiled window's CPU per request),
                           estimated_share, top [[frame, share of the category], ...]}, layers,
                           pending_samples, pyspy, notes
  flamegraphs              paths (relative to the results folder) of the folded stacks and SVGs
  warnings                 anything that makes the record less trustworthy
"""
from __future__ import annotations

from bench import records, wrk
from bench.profiling.attribute import Attribution
from rankbench import thresholds

SCHEMA = 1
NAMED_TARGET = 0.90          # issue 14: at least 90% of sampled CPU in named categories
SAMPLED_CPU_TOLERANCE = 0.2  # perf's sampled CPU vs the sampler's, relative
UNNAMED_LEAF_LIMIT = 0.05
LOST_LIMIT = 0.01

CLIENT_KEYS = ("requests", "rps", "ok", "goodput_rps", "non2xx", "errors", "latency_us",
               "duration_s", "connections", "threads", "bytes")


def window_record(*, data: dict, usage, sampled, concurrency: int, harness_cpu_s: float,
                  cores: int, wrk_threads: int, window: tuple[float, float], profilers: dict,
                  db_measured: bool) -> dict:
    """One measured window (unprofiled or profiled), as the bench measures a run."""
    client = wrk.client_record(data, concurrency)
    records.add_goodput(client)
    valid, reasons = records.validity(client)
    requests = client["requests"]
    resources = records.resources(sampled, requests, harness_cpu_s, cores, client["duration_s"])
    window_cpu = wrk.window_cpu_s(data)
    load_cpu = window_cpu if window_cpu is not None else usage.cpu_s
    resources["load"] = records.load_record(
        load_cpu, requests, client["duration_s"], usage,
        "wrk os.clock() init..done" if window_cpu is not None else "wait4 (whole process)")
    records.add_unattributed(resources)
    # The profilers are this run's own processes, not other work on the machine.
    profilers_cpu = sum(p.get("cpu_s", 0.0) for p in profilers.values())
    resources["machine"]["unattributed_cpu_s"] = round(
        resources["machine"]["unattributed_cpu_s"] - profilers_cpu, 3)
    warnings = records.foreign_warnings(resources, db_measured)
    duration = client.get("duration_s") or 0.0
    if duration and load_cpu / (duration * wrk_threads) > thresholds.LOAD_SATURATED_CORES:
        warnings.append("wrk saturated its core: the load generator may be the bottleneck")
    latency = client.get("latency_us") or {}
    return {"client": {k: client.get(k) for k in CLIENT_KEYS} |
            {"latency_us": {k: latency.get(k) for k in ("mean", "p50", "p90", "p99", "max")}},
            "resources": resources, "window": [round(window[0], 6), round(window[1], 6)],
            "profilers": profilers, "valid": valid, "invalid_reasons": reasons,
            "warnings": warnings}


def overhead(unprofiled: dict, profiled: dict) -> dict:
    """What a profiler cost, from two windows of the same server process."""
    def cpu(w):
        return (w["resources"].get("server") or {}).get("cpu_us_per_req")

    rps0, rps1 = unprofiled["client"]["rps"], profiled["client"]["rps"]
    cpu0, cpu1 = cpu(unprofiled), cpu(profiled)
    prof_cpu = sum(p.get("cpu_s", 0.0) for p in profiled["profilers"].values())
    duration = profiled["client"].get("duration_s") or 0.0
    return {
        "rps_unprofiled": rps0, "rps_profiled": rps1,
        "rps_change": round(rps1 / rps0 - 1, 4) if rps0 else None,
        "server_cpu_us_per_req_unprofiled": cpu0, "server_cpu_us_per_req_profiled": cpu1,
        "server_cpu_change": round(cpu1 / cpu0 - 1, 4) if cpu0 and cpu1 else None,
        "profilers_cpu_s": round(prof_cpu, 4),
        "profilers_cores": round(prof_cpu / duration, 4) if duration else None,
    }


def profile_warnings(profile: dict, attribution: Attribution) -> list[str]:
    warnings = []
    if profile["samples"] == 0:
        return ["perf recorded no sample of the server in the window"]
    if profile["named_share"] < NAMED_TARGET:
        warnings.append(f"only {profile['named_share']:.1%} of sampled CPU is in named categories "
                        f"(target {NAMED_TARGET:.0%}); see categories.other.top")
    lost = attribution.lost / (attribution.samples + attribution.lost) if attribution.lost else 0.0
    if lost > LOST_LIMIT:
        warnings.append(f"perf lost {lost:.1%} of its samples (ring buffer full): the shares "
                        f"stand, the sampled CPU is short by as much")
    ratio = profile.get("sampled_vs_measured_cpu")
    if ratio is not None and abs(ratio - 1) > SAMPLED_CPU_TOLERANCE:
        warnings.append(f"perf sampled {ratio:.0%} of the server CPU the sampler measured")
    unnamed = attribution.unnamed_leaf / attribution.samples if attribution.samples else 0.0
    if unnamed > UNNAMED_LEAF_LIMIT:
        warnings.append(f"{unnamed:.0%} of samples are `other` with no symbol at the leaf "
                        f"(a stripped binary?)")
    return warnings + list(attribution.notes)


def profile_record(*, job, spec, settings, workers: int, started_at: str, mode: str,
                   order: list[str], windows: dict, attribution: Attribution, flames: dict,
                   relative) -> dict:
    # Shares describe the server's own work: taking a sample (the interrupt, the stack copy) is CPU
    # charged to the server that no sample can see. So the shares apply to the CPU per request of
    # the unprofiled window; the perf window's own figure is kept beside it.
    server = windows["perf"]["resources"].get("server") or {}
    basis = (windows["unprofiled"]["resources"].get("server") or {}).get("cpu_us_per_req")
    profile = attribution.as_record(basis)
    profile["cpu_us_per_req_basis"] = "unprofiled window"
    profile["cpu_us_per_req_perf_window"] = server.get("cpu_us_per_req")
    profile["sampled_vs_measured_cpu"] = (round(attribution.sampled_cpu_s / server["cpu_s"], 4)
                                          if server.get("cpu_s") else None)
    profile["unnamed_leaf_samples"] = attribution.unnamed_leaf
    warnings = [f"{which}: {w}" for which in order for w in windows[which]["warnings"]]
    warnings += [f"{which}: invalid ({'; '.join(windows[which]['invalid_reasons'])})"
                 for which in order if not windows[which]["valid"]]
    warnings += profile_warnings(profile, attribution)
    return {
        "schema": SCHEMA, "kind": "profile", "server": spec.name, "backend": spec.backend,
        "facets": spec.facets(), "role": spec.role, "items": job.items,
        "concurrency": job.concurrency, "repeat": job.repeat, "top_k": settings.top_k,
        "duration_s": float(settings.duration_s), "warmup_s": float(settings.warmup_s),
        "workers": workers, "pool_size": settings.pool_size, "seed": settings.seed + job.repeat,
        "started_at": started_at, "python_frames": mode, "order": order,
        "windows": windows,
        "overhead": {which: overhead(windows["unprofiled"], windows[which])
                     for which in ("perf", "py-spy") if which in windows},
        "profile": profile,
        "flamegraphs": {k: relative(v) for k, v in flames.items()},
        "warnings": warnings,
    }
