"""The soak profile behind `make soak` (issue 7, item 6; not run in CI).

    .venv/bin/python -m tests.faults.soak [--servers py-onnx,candle] [--duration 300]

For every server: start it against the project's database (DATABASE_URL or the private cluster),
measure its peak throughput with wrk (wrk_scripts/rank.lua, --connections, after a short warm-up),
then hold --fraction (80 %) of that peak for --duration seconds with a paced wrk (soak.lua) run in
--segment-second pieces, adjusting the pacing between pieces to stay on target. The server's RSS
(whole process tree) is sampled every second. A server passes when, after --warmup seconds, its RSS
grew by less than --max-rss-growth-pct (5 %) between the median of the first and of the last
10 seconds, and no request failed (no non-2xx answer, no socket error or timeout).

Results go to results/<UTC timestamp>-soak/ like a bench run: env.json and runs.jsonl, one record
per server in the contract's format with "scenario": "soak" and a `soak` object (peak and target
rates, the RSS timeline, the growth, per-segment rates and errors, the verdict). Exit status 0 only
when every server passed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from rankbench.config import RESULTS_DIR, dsn as default_dsn
from rankbench.servers import SERVERS

SOAK_LUA = Path(__file__).resolve().with_name("soak.lua")
SCRIPT_ARGS = {"items": 10, "top_k": 10}


class SoakError(RuntimeError):
    pass


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        from .servers import tree_rss_mb

        while not self.halt.is_set():
            self.samples.append((round(time.monotonic() - self.t0, 2), round(tree_rss_mb(self.pid), 2)))
            self.halt.wait(self.interval_s)


def run_wrk(url: str, script: Path, connections: int, threads: int, seconds: int,
            script_args: dict) -> dict:
    from bench import wrk as bench_wrk

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SoakError("wrk is not installed")
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(script), url, "--", *[f"{k}={v}" for k, v in script_args.items()]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SoakError(f"wrk exited {out.returncode}: {out.stderr.strip()[-300:]}")
    return bench_wrk.client_record(bench_wrk.parse_output(out.stdout), connections)


def soak_server(name: str, database: str, args) -> dict:
    from rankbench import histogram
    from bench import wrk as bench_wrk

    from .servers import start

    spec = SERVERS[name]
    try:
        server = start(name, database)
    except BaseException as exc:  # pytest.fail's exception when the server does not come up
        raise SoakError(f"{name} did not start: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    url = f"http://{server.host}:{server.port}/rank"
    rank_lua = bench_wrk.script_path("rank")
    sampler = RssSampler(server.process.pid)
    started_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        say = lambda msg: print(f"soak {name}: {msg}", flush=True)  # noqa: E731
        run_wrk(url, rank_lua, args.connections, args.threads, 5, SCRIPT_ARGS)
        peak = run_wrk(url, rank_lua, args.connections, args.threads, args.peak_seconds,
                       SCRIPT_ARGS)
        peak_rps = peak["rps"]
        if peak_rps <= 0 or peak["non2xx"] or any(peak["errors"].values()):
            raise SoakError(f"{name}: peak run failed: {peak['rps']} rps, errors {peak['errors']}")
        target = args.fraction * peak_rps
        # Start below the target (as if a request took 1 ms): an unsaturated server shows its true
        # latency as cycle - delay, so the controller lands in a segment or two. Starting above it
        # would measure queueing instead and creep out of saturation slowly.
        delay_us = max(0.0, args.connections * 1e6 / target - 1000.0)
        say(f"peak {peak_rps:.0f} rps at -c{args.connections}; holding {target:.0f} rps "
            f"for {args.duration} s")
        sampler.start()
        segments, measured = [], []
        elapsed = 0
        stats_reset = False
        while elapsed < args.duration:
            if elapsed >= args.warmup and not stats_reset:
                _reset_stats(server)      # stages of the judged window only
                stats_reset = True
            seconds = min(args.segment, args.duration - elapsed)
            client = run_wrk(url, SOAK_LUA, args.connections, args.threads, seconds,
                             {**SCRIPT_ARGS, "delay_us": int(delay_us)})
            elapsed += seconds
            segment = {"end_s": elapsed, "delay_us": int(delay_us), "rps": client["rps"],
                       "requests": client["requests"], "non2xx": client["non2xx"],
                       "errors": {k: v for k, v in client["errors"].items() if v}}
            segments.append(segment)
            if elapsed > args.warmup:
                measured.append(client)
            if client["rps"] > 0:
                cycle_us = args.connections * 1e6 / client["rps"]
                wanted = max(0.0, args.connections * 1e6 / target - (cycle_us - delay_us))
                delay_us = 0.3 * delay_us + 0.7 * wanted
            say(f"{elapsed:>4d} s  {client['rps']:8.0f} rps  rss {sampler.samples[-1][1]:7.1f} MB"
                f"  errors {segment['errors'] or 0} non2xx {client['non2xx']}")
        stats = _get_stats(server)
    finally:
        sampler.halt.set()
        if sampler.is_alive():
            sampler.join(5)
        exit_code = server.stop()

    after_warmup = [(t, mb) for t, mb in sampler.samples if t >= args.warmup]
    if len(after_warmup) < 4:
        raise SoakError(f"{name}: too few RSS samples after the warm-up ({len(after_warmup)}); "
                        f"make --duration longer than --warmup")
    window = max(2, min(10, len(after_warmup) // 3))
    rss_start = statistics.median(mb for _, mb in after_warmup[:window])
    rss_end = statistics.median(mb for _, mb in after_warmup[-window:])
    growth = (rss_end - rss_start) / rss_start * 100
    total_requests = sum(c["requests"] for c in measured)
    # wrk counts non-2xx answers as errors.status too: count them once.
    failures = sum(s["non2xx"] + sum(v for k, v in s["errors"].items() if k != "status")
                   for s in segments)
    merged = histogram.merge_pairs(*(c["histogram"] for c in measured)) if measured else []
    measured_s = sum(c["duration_s"] for c in measured)
    latency = histogram.summary(merged) if merged else {}
    latency.pop("min", None)
    passed = growth < args.max_rss_growth_pct and failures == 0
    return {
        "schema": 1, "server": name, "backend": spec.backend, "workers": 1, "pool_size": 8,
        "scenario": "soak", "candidates": SCRIPT_ARGS["items"], "top_k": SCRIPT_ARGS["top_k"],
        "concurrency": args.connections, "duration_s": float(args.duration - args.warmup),
        "warmup_s": float(args.warmup), "repeat": 0, "started_at": started_at,
        "client": {"tool": "wrk", "requests": total_requests,
                   "rps": round(total_requests / measured_s, 2) if measured_s else 0.0,
                   "non2xx": sum(c["non2xx"] for c in measured),
                   "errors": {k: sum(c["errors"][k] for c in measured) for k in bench_wrk.ERROR_KINDS},
                   "latency_us": latency},
        "stages": stats.get("stages", {}) if stats else {},
        "resources": {"server": {"rss_peak_mb": max((mb for _, mb in sampler.samples), default=0.0)}},
        "warnings": [] if exit_code == 0 else [f"server exit status {exit_code} after SIGTERM"],
        "soak": {"peak_rps": peak_rps, "fraction": args.fraction, "target_rps": round(target, 1),
                 "rss_mb_after_warmup": round(rss_start, 1), "rss_mb_end": round(rss_end, 1),
                 "rss_growth_pct": round(growth, 2), "max_rss_growth_pct": args.max_rss_growth_pct,
                 "failures": failures, "passed": passed, "segments": segments,
                 "rss_timeline": sampler.samples},
    }


def _reset_stats(server) -> None:
    from .rawhttp import exchange, request

    answer = exchange(server.host, server.port, request(b"POST", b"/stats/reset", b""))
    if answer.status != 204:
        raise SoakError(f"{server.name}: POST /stats/reset answered {answer.label}")


def _get_stats(server) -> dict | None:
    from .rawhttp import exchange, request

    answer = exchange(server.host, server.port, request(b"GET", b"/stats"))
    try:
        return json.loads(answer.body) if answer.status == 200 else None
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=os.environ.get("RANKBENCH_SERVERS", ""),
                        help="comma list (default: every server whose prerequisites exist)")
    parser.add_argument("--duration", type=int, default=300, help="seconds held at the target")
    parser.add_argument("--warmup", type=int, default=30, help="first seconds not judged")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of the peak to hold")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--segment", type=int, default=10, help="seconds per paced wrk run")
    parser.add_argument("--peak-seconds", type=int, default=10)
    parser.add_argument("--max-rss-growth-pct", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default results/<UTC timestamp>-soak)")
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1 or args.duration <= args.warmup or args.segment < 1:
        print("soak: need 0 < --fraction <= 1, --duration > --warmup, --segment >= 1", file=sys.stderr)
        return 2

    from .servers import missing_prerequisites, selection

    names = [n.strip() for n in args.servers.split(",") if n.strip()] or selection()[0]
    for name in names:
        if name not in SERVERS:
            print(f"soak: unknown server {name!r} (known: {', '.join(SERVERS)})", file=sys.stderr)
            return 2
        missing = missing_prerequisites(SERVERS[name])
        if missing:
            print(f"soak: {name}: prerequisites missing: {', '.join(missing)}", file=sys.stderr)
            return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"{stamp}-soak"
    out.mkdir(parents=True, exist_ok=True)
    database = default_dsn()
    _write_env(out, args, names)
    # SIGTERM unwinds like Ctrl-C, so that the server and wrk started here are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    failed = []
    for name in names:
        try:
            result = soak_server(name, database, args)
        except SoakError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        except KeyboardInterrupt:
            print("soak: interrupted", file=sys.stderr)
            return 130
        with open(out / "runs.jsonl", "a") as handle:
            handle.write(json.dumps(result) + "\n")
        s = result["soak"]
        verdict = "PASS" if s["passed"] else "FAIL"
        print(f"soak {name}: {verdict}: {result['client']['rps']:.0f} rps held (target "
              f"{s['target_rps']:.0f}, peak {s['peak_rps']:.0f}), RSS {s['rss_mb_after_warmup']} -> "
              f"{s['rss_mb_end']} MB ({s['rss_growth_pct']:+.2f} %), {s['failures']} failures, "
              f"p99 {result['client']['latency_us'].get('p99', 0) / 1000:.1f} ms", flush=True)
        if not s["passed"]:
            failed.append(name)
    print(f"soak: results in {out}")
    return 1 if failed else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _write_env(out: Path, args, names: list[str]) -> None:
    from bench import environment
    from bench import wrk as bench_wrk

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    env = environment.collect(settings, {}, None, {"wrk": bench_wrk.version()},
                              {name: {"backend": SERVERS[name].backend} for name in names})
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
