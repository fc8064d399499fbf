"""`python -m bench.loadgen_compare`: open-loop load generators measured side by side.

Against a trivial server (tests/slo/trivial_server.rs: a fixed answer, no work, its own CPU
reported), for every candidate installed (vegeta, oha, k6: scripts/install_loadgen.sh --all
installs the pinned versions), each sending the wrk script's own request pool:

- cost: the generator's CPU microseconds per request at each offered rate (default 1000, 3000,
  5000 req/s), its CPU read from /proc over a steady window (after a lead-in, before its end) and
  divided by the requests the server counted in that same window;
- the highest rate it sustains: offered rates climb (default 2000 ... 24000) until the server counts
  fewer than 98% of them in the window;
- open loop or not: at 1000 req/s the server holds every answer for 1 s; an open-loop generator
  keeps sending (about 1000 arrivals during the stall), a closed loop stops once its connections
  wait (arrivals = connections at most).

Runs are interleaved (every repeat runs every tool at a rate before the next rate, the order
rotated), and the table shows the median with the range over repeats. On a shared machine the
figures are noisy: the table says how busy the machine was. `--json FILE` keeps every measurement;
`--limit-file` (default .bench/loadgen_limit.json) receives the chosen generator's highest rate,
which `make bench-slo` compares with the rates it offers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rankbench import config

from bench import openloop
from bench.procs import Supervisor
from bench.serverproc import HOST, free_port, http_call

TRIVIAL_SOURCE = config.ROOT / "tests" / "slo" / "trivial_server.rs"
TRIVIAL_BINARY = openloop.TOOLS_BIN / "rankbench-trivial-server"
LIMIT_FILE = config.BENCH_DIR / "loadgen_limit.json"
DEFAULT_SHAPE = openloop.RequestShape(items=10, top_k=10, users=(1, 200_000),
                                      item_range=(1, 100_000), seed=1)
SUSTAINED = 0.98          # a rate is sustained when the server counts >= 98% of it
STALL_WIDE = 1200         # oha's stall test again with more connections than rate x stall


class CompareError(RuntimeError):
    pass


# -- the trivial server -------------------------------------------------------------------------
def trivial_server_binary() -> Path:
    """Built with rustc alone (standard library only) when missing or older than its source."""
    if TRIVIAL_BINARY.exists() and TRIVIAL_BINARY.stat().st_mtime >= TRIVIAL_SOURCE.stat().st_mtime:
        return TRIVIAL_BINARY
    rustc = shutil.which("rustc")
    if rustc is None:
        raise CompareError("rustc is not on PATH (the trivial server is one Rust file): install "
                           "Rust stable (https://rustup.rs)")
    TRIVIAL_BINARY.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([rustc, "-O", "--edition", "2021", "-o", str(TRIVIAL_BINARY),
                          str(TRIVIAL_SOURCE)], capture_output=True, text=True)
    if out.returncode != 0:
        raise CompareError(f"rustc failed on {TRIVIAL_SOURCE.name}: {out.stderr.strip()[-500:]}")
    return TRIVIAL_BINARY


def counters(port: int) -> dict:
    status, body = http_call(port, "GET", "/counters")
    if status != 200:
        raise CompareError(f"trivial server: GET /counters answered {status}")
    return json.loads(body)


class TrivialServer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.port = free_port()
        self.proc = supervisor.start([str(trivial_server_binary()), "--port", str(self.port)],
                                     "trivial-server", None, None)
        deadline = time.monotonic() + 10
        while True:
            try:
                if http_call(self.port, "GET", "/health", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CompareError("the trivial server did not start")
            time.sleep(0.05)
        self.url = f"http://{HOST}:{self.port}/rank"

    def cpu_s(self) -> float:
        return openloop.process_cpu_s(self.proc.pid) or 0.0

    def stop(self) -> None:
        self.supervisor.stop(self.proc, grace_s=2.0)


# -- the candidates -------------------------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    version: str
    how_open: str          # how it keeps the rate when the server does not answer
    bodies: str            # how it gets the bodies

    def argv(self, binary: Path, url: str, rate: int, seconds: int, files: dict[str, Path]
             ) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError


class Vegeta(Candidate):
    def argv(self, binary, url, rate, seconds, files):
        # JSON targets (base64 bodies) read once and sent round-robin; -max-body 0 keeps no response
        # body in the results; the binary results stream is what its reports read.
        return ([str(binary), "attack", "-format=json", f"-targets={files['vegeta_targets']}",
                 f"-rate={rate}/s", f"-duration={seconds}s", "-timeout=10s", "-max-body=0",
                 "-http2=false", f"-output={files['out'] / 'vegeta.bin'}"], {})


class Oha(Candidate):
    connections = openloop.CONNECTIONS

    def argv(self, binary, url, rate, seconds, files):
        # Exactly the command bench.slo runs (connections, threads, timeout).
        return openloop.command(binary, url, rate=rate, duration_s=seconds,
                                connections=files.get("oha_connections", self.connections),
                                timeout_s=openloop.TIMEOUT_S, bodies=files["bodies"],
                                output=files["out"] / "oha.csv", threads=openloop.THREADS), {}


class K6(Candidate):
    SCRIPT = """import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
const bodies = new SharedArray('bodies', () => open(__ENV.BODIES).split('\\n').filter((l) => l.length > 0));
const params = { headers: { 'Content-Type': 'application/json' } };
export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['p(50)', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: { open: { executor: 'constant-arrival-rate', rate: Number(__ENV.RATE), timeUnit: '1s',
    duration: __ENV.DURATION, preAllocatedVUs: Number(__ENV.VUS), maxVUs: Number(__ENV.MAX_VUS) } },
};
export default function () {
  http.post(__ENV.URL, bodies[exec.scenario.iterationInTest % bodies.length], params);
}
"""

    def argv(self, binary, url, rate, seconds, files):
        script = files["out"] / "k6_open.js"
        if not script.exists():
            script.write_text(self.SCRIPT)
        env = {"BODIES": str(files["bodies"]), "RATE": str(rate), "DURATION": f"{seconds}s",
               "VUS": str(max(50, rate // 20)), "MAX_VUS": "5000", "URL": url,
               "K6_NO_USAGE_REPORT": "true"}
        return ([str(binary), "run", "--quiet", "--no-color", "--no-usage-report",
                 "--summary-export", str(files["out"] / "k6_summary.json"), str(script)], env)


CANDIDATES = {
    "vegeta": Vegeta("vegeta", "v12.13.0",
                     "a new worker (and connection) for every tick that finds all workers busy; "
                     "latency from the actual send", "JSON targets file, round-robin"),
    "oha": Oha("oha", openloop.VERSION,
               f"ticks at i/rate queue while its {openloop.CONNECTIONS} connections are busy; latency from "
               f"the tick (--latency-correction)", "-Z file, one body per line, random line"),
    "k6": K6("k6", "v1.8.1",
             "constant-arrival-rate: a free VU per iteration, up to maxVUs=5000, else the "
             "iteration is dropped (counted); latency from the actual send",
             "SharedArray of the lines, iterationInTest modulo the pool"),
}


# -- measuring --------------------------------------------------------------------------------------
@dataclass
class Measurement:
    tool: str
    rate: int
    repeat: int
    seconds: float
    arrived_rps: float
    cpu_us_per_req: float | None
    cores: float | None
    server_cores: float
    machine_busy_share: float
    exit_code: int | None
    note: str = ""

    @property
    def sustained(self) -> bool:
        return self.arrived_rps >= SUSTAINED * self.rate

    def as_json(self) -> dict:
        return dict(vars(self), sustained=self.sustained)


def measure(tool: str, binary: Path, server: TrivialServer, rate: int, seconds: int,
            files: dict[str, Path], supervisor: Supervisor, repeat: int = 0,
            lead_s: float = 1.5, tail_s: float = 0.5) -> Measurement:
    """One run of a generator at `rate`; the steady window is [lead_s, seconds - tail_s]."""
    argv, extra_env = CANDIDATES[tool].argv(binary, server.url, rate, seconds, files)
    log = files["out"] / f"{tool}-{rate}-{repeat}.log"
    env = dict(os.environ, **extra_env)
    started = time.monotonic()
    proc = supervisor.start(argv, tool, log, log, env=env)
    try:
        time.sleep(max(0.0, started + lead_s - time.monotonic()))
        c0, n0, s0, t0 = (openloop.process_cpu_s(proc.pid), counters(server.port)["requests"],
                          server.cpu_s(), time.monotonic())
        m0 = psutil.cpu_times()
        time.sleep(max(0.0, started + seconds - tail_s - time.monotonic()))
        c1, n1, s1, t1 = (openloop.process_cpu_s(proc.pid), counters(server.port)["requests"],
                          server.cpu_s(), time.monotonic())
        m1 = psutil.cpu_times()
        usage = supervisor.wait_measured(proc, timeout_s=seconds + 60)
    finally:
        if proc.poll() is None:
            supervisor.stop(proc, grace_s=2.0)
    window = t1 - t0
    arrived = n1 - n0
    cpu = (c1 - c0) if c0 is not None and c1 is not None else None
    busy = sum(getattr(m1, f) - getattr(m0, f) for f in ("user", "nice", "system"))
    return Measurement(
        tool=tool, rate=rate, repeat=repeat, seconds=round(window, 3),
        arrived_rps=round(arrived / window, 1),
        cpu_us_per_req=round(cpu / arrived * 1e6, 1) if cpu is not None and arrived else None,
        cores=round(cpu / window, 3) if cpu is not None else None,
        server_cores=round((s1 - s0) / window, 3),
        machine_busy_share=round(busy / (window * (psutil.cpu_count() or 1)), 3),
        exit_code=proc.returncode, note="" if usage else "")


def stall_test(tool: str, binary: Path, server: TrivialServer, files: dict[str, Path],
               supervisor: Supervisor, rate: int = 1000, stall_ms: int = 1000,
               seconds: int = 6) -> dict:
    """Arrivals at the server while it holds every answer for stall_ms, against rate x stall.
    (oha's arrivals are capped by its -c: files["oha_connections"] overrides it.)"""
    argv, extra_env = CANDIDATES[tool].argv(binary, server.url, rate, seconds, files)
    log = files["out"] / f"{tool}-stall.log"
    proc = supervisor.start(argv, tool, log, log, env=dict(os.environ, **extra_env))
    try:
        time.sleep(2.0)
        status, _ = http_call(server.port, "POST", f"/stall?ms={stall_ms}")
        if status != 204:
            raise CompareError(f"trivial server: POST /stall answered {status}")
        time.sleep(stall_ms / 1000 + 0.05)
        arrivals = counters(server.port)["stall_arrivals"]
        supervisor.wait_measured(proc, timeout_s=seconds + 60)
    finally:
        if proc.poll() is None:
            supervisor.stop(proc, grace_s=2.0)
    expected = rate * stall_ms / 1000
    return {"tool": tool, "rate": rate, "stall_ms": stall_ms, "arrivals_during_stall": arrivals,
            "expected_if_open": expected, "open_share": round(arrivals / expected, 3)}


LIMIT_LADDER = (2000, 4000, 6000, 8000, 11000, 15000, 20000, 24000)


def generator_limit(supervisor: Supervisor, work: Path, rates: tuple[int, ...] = LIMIT_LADDER,
                    seconds: int = 5) -> dict:
    """The open-loop generator's highest sustained rate against the trivial server (one climb of
    the ladder, stopping at the first rate it does not sustain): what bench.slo states and warns
    against. `work` receives its bodies file and logs."""
    binary = openloop.require()
    files = {"out": work, "bodies": openloop.write_bodies(
        work / "trivial-bodies.txt", openloop.request_bodies(DEFAULT_SHAPE))}
    server = TrivialServer(supervisor)
    found = []
    try:
        for rate in rates:
            found.append(measure(openloop.TOOL, binary, server, rate, seconds, files, supervisor))
            if not found[-1].sustained:
                break
    finally:
        server.stop()
    return limit_facts(found)


def limit_facts(found: list[Measurement]) -> dict:
    return {"tool": openloop.TOOL, "version": openloop.version(),
            "max_rps": highest_sustained(found),
            "tested_up_to": max((m.rate for m in found), default=None),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": psutil.cpu_count(), "runs": [m.as_json() for m in found]}


def read_limit(path: Path = LIMIT_FILE) -> dict | None:
    """A limit measured earlier on this machine by this version of the generator, or None."""
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (facts.get("tool") != openloop.TOOL or facts.get("version") != openloop.version()
            or facts.get("cpus") != psutil.cpu_count() or not facts.get("max_rps")):
        return None
    return facts


def write_limit(facts: dict, path: Path = LIMIT_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(facts) + "\n")


def rotated(items: list[str], k: int) -> list[str]:
    k %= len(items) if items else 1
    return items[k:] + items[:k]


def summarise(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.0f}"
    return f"{median:.0f} ({min(values):.0f}-{max(values):.0f})"


def highest_sustained(found: list[Measurement]) -> int | None:
    """The highest rate sustained in the majority of its repeats, below which every rate was too."""
    best = None
    for rate in sorted({m.rate for m in found}):
        runs = [m for m in found if m.rate == rate]
        if sum(m.sustained for m in runs) * 2 > len(runs):
            best = rate
        else:
            break
    return best


def table(results: dict, tools: list[str], cost_rates: list[int]) -> str:
    lines = ["| generator | " + " | ".join(f"CPU us/req at {r}/s" for r in cost_rates) +
             " | highest sustained rate (req/s) | arrivals during a 1 s stall at 1000/s | "
             "how it stays open | bodies |",
             "|---|" + "---|" * len(cost_rates) + "---|---|---|---|"]
    for tool in tools:
        cost = [m for m in results["cost"] if m.tool == tool]
        cells = [summarise([m.cpu_us_per_req for m in cost if m.rate == r]) for r in cost_rates]
        limit = highest_sustained([m for m in results["limit"] if m.tool == tool])
        tested = max((m.rate for m in results["limit"] if m.tool == tool), default=None)
        limit_text = ("n/a" if tested is None else
                      f">= {limit}" if limit == tested else str(limit) if limit else f"< {min(m.rate for m in results['limit'] if m.tool == tool)}")
        stalls = [s for s in results["stall"] if s["tool"] == tool]
        stall_text = "; ".join(
            f"{s['arrivals_during_stall']} of {s['expected_if_open']:.0f}" +
            (f" (-c {s['connections']})" if s.get("connections") else "") for s in stalls) or "n/a"
        c = CANDIDATES[tool]
        lines.append(f"| {tool} {c.version} | " + " | ".join(cells) +
                     f" | {limit_text} | {stall_text} | {c.how_open} | {c.bodies} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen_compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default="vegeta,oha,k6")
    parser.add_argument("--cost-rates", default="1000,3000,5000")
    parser.add_argument("--limit-rates", default=",".join(map(str, LIMIT_LADDER)))
    parser.add_argument("--seconds", type=int, default=8, help="length of each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stall", dest="stall", action="store_false")
    parser.add_argument("--no-limit", dest="limit", action="store_false")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    parser.add_argument("--limit-file", type=Path, default=LIMIT_FILE,
                        help=f"where the chosen generator's ({openloop.TOOL}) highest sustained "
                             f"rate is written (default {LIMIT_FILE.relative_to(config.ROOT)})")
    args = parser.parse_args(argv)

    tools, missing = [], []
    for tool in [t for t in args.tools.split(",") if t]:
        if tool not in CANDIDATES:
            print(f"loadgen_compare: unknown tool {tool!r} (known: {', '.join(CANDIDATES)})",
                  file=sys.stderr)
            return 2
        (tools if openloop.find(tool) else missing).append(tool)
    for tool in missing:
        print(f"loadgen_compare: {tool} is not installed (bash scripts/install_loadgen.sh --all "
              f"installs every candidate); skipped", file=sys.stderr)
    if not tools:
        return 1
    cost_rates = [int(r) for r in args.cost_rates.split(",")]
    limit_rates = [int(r) for r in args.limit_rates.split(",")] if args.limit else []

    supervisor = Supervisor()
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: dict = {"cost": [], "limit": [], "stall": []}
    try:
        with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
            out = Path(tmp)
            bodies = openloop.request_bodies(DEFAULT_SHAPE)
            server = TrivialServer(supervisor)
            files = {"out": out, "bodies": openloop.write_bodies(out / "bodies.txt", bodies),
                     "vegeta_targets": _vegeta_targets(out / "targets.json", bodies, server.url)}
            binaries = {t: openloop.find(t) for t in tools}
            print(f"loadgen_compare: {', '.join(f'{t} ({binaries[t]})' for t in tools)} against "
                  f"the trivial server; {args.repeats} interleaved repeat(s), {args.seconds} s runs; "
                  f"figures from a shared machine are preliminary", flush=True)
            for repeat in range(args.repeats):
                for rate in cost_rates:
                    for tool in rotated(tools, repeat):
                        m = measure(tool, binaries[tool], server, rate, args.seconds, files,
                                    supervisor, repeat)
                        results["cost"].append(m)
                        print(f"  cost  {tool:7s} {rate:6d}/s r{repeat}: {m.cpu_us_per_req} us/req, "
                              f"arrived {m.arrived_rps}/s, machine busy {m.machine_busy_share:.0%}",
                              flush=True)
            for tool in tools if args.stall else []:
                s = stall_test(tool, binaries[tool], server, files, supervisor)
                results["stall"].append(s)
                print(f"  stall {tool:7s}: {s['arrivals_during_stall']} arrivals of "
                      f"{s['expected_if_open']:.0f} if open", flush=True)
                if tool == "oha":  # the same with more connections than rate x stall
                    wide = stall_test(tool, binaries[tool], server,
                                      dict(files, oha_connections=STALL_WIDE), supervisor)
                    results["stall"].append(dict(wide, connections=STALL_WIDE))
                    print(f"  stall oha -c {STALL_WIDE}: {wide['arrivals_during_stall']} arrivals",
                          flush=True)
            for repeat in range(args.repeats if limit_rates else 0):
                for tool in rotated(tools, repeat):
                    for rate in limit_rates:
                        m = measure(tool, binaries[tool], server, rate, args.seconds, files,
                                    supervisor, repeat)
                        results["limit"].append(m)
                        print(f"  limit {tool:7s} {rate:6d}/s r{repeat}: arrived {m.arrived_rps}/s "
                              f"({m.cores} cores)", flush=True)
                        if not m.sustained:
                            break
            server.stop()
    except (openloop.OpenLoopError, CompareError) as exc:
        print(f"loadgen_compare: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadgen_compare: interrupted", file=sys.stderr)
        return 130
    finally:
        supervisor.stop_all()
        signal.signal(signal.SIGTERM, previous)

    print()
    print(table(results, tools, cost_rates))
    busy = [m.machine_busy_share for m in results["cost"] + results["limit"]]
    print(f"\nmachine: {psutil.cpu_count()} cores, busy {statistics.median(busy):.0%} of them "
          f"(median over the windows, the generators and the server included)")
    if args.json:
        args.json.write_text(json.dumps({k: [m.as_json() if isinstance(m, Measurement) else m
                                             for m in v] for k, v in results.items()}, indent=1))
    if openloop.TOOL in tools and results["limit"]:
        facts = limit_facts([m for m in results["limit"] if m.tool == openloop.TOOL])
        if facts["max_rps"]:
            write_limit(facts, args.limit_file)
            print(f"{openloop.TOOL}'s highest sustained rate {facts['max_rps']} req/s -> "
                  f"{args.limit_file}")
    return 0


def _vegeta_targets(path: Path, bodies: list[bytes], url: str) -> Path:
    import base64

    with open(path, "w") as handle:
        for body in bodies:
            handle.write(json.dumps({"method": "POST", "url": url,
                                     "header": {"Content-Type": ["application/json"]},
                                     "body": base64.b64encode(body).decode()}) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
