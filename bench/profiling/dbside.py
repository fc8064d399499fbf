"""`python -m bench.profiling.dbside`: what PostgreSQL does per request for each server, and why it
costs more CPU behind some servers than behind others (issue 14, item 6).

Three measurements, each reusing the bench's harness (Bench: checks, server command lines, wrk
runs, the sampler's postgres groups):

- protocol: the PostgreSQL protocol messages and TCP segments per request, as PostgreSQL sees them:
  a loopback capture (tcpdump) of N sequential /rank requests, decoded by tshark, restricted to the
  server's own connections (other clients of the cluster are left out);
- load: every server under wrk at several concurrencies: requests/s, CPU per request of the server
  and of its postgres backends (user/system), the backends' context switches per request (each
  voluntary one is a backend going to sleep waiting for the next message: a wake-up) and their
  syscalls per request (perf stat, when perf may count);
- driver: asyncpg alone, no HTTP server, the contract's two queries on `POOL` connections, closed
  loop or paced to a rate: PostgreSQL's CPU per transaction with fetchval (Execute with a row limit
  of 1, as py_servers does), with fetch (no limit, as tokio-postgres does), with both queries in
  one statement (one round trip), without asyncpg's statement cache, and through an asyncpg pool
  without (py_servers) and with (asyncpg's default) the reset query on release.

Results go to results/<stamp>-dbside/dbside.json and a table on stdout. Keep runs short on a shared
machine; the figures are only comparable within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from bench import db
from bench.plan import Run
from bench.profiling.session import ProfileFolder
from bench.results import utc
from bench.runner import Bench
from bench.sampler import PostgresGroups, ResourceSampler, process_tree
from bench.serverproc import BenchError, http_call
from bench.settings import Settings
from rankbench import config, contract

PG_PORT_FILTER = "tcp port {port}"
DRIVER_VARIANTS = ("fetchval", "fetch", "one-round-trip", "no-statement-cache", "pool-no-reset",
                   "pool-default")
ONE_ROUND_TRIP_SQL = ("SELECT u.features, i.id, i.features FROM users u "
                      "LEFT JOIN items i ON i.id = ANY($2) WHERE u.id = $1")


# -- protocol ------------------------------------------------------------------------------------
def decode(pcap: Path, db_port: int, ports: list[int], requests: int) -> dict:
    """Messages and segments per request from a capture, for the given client ports."""
    wanted = " || ".join(f"tcp.port == {p}" for p in ports)
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={db_port},pgsql",
                          "-Y", f"({wanted})", "-T", "fields", "-E", "separator=|",
                          "-e", "tcp.srcport", "-e", "tcp.len", "-e", "pgsql.type"],
                         capture_output=True, text=True, check=True).stdout
    segments, acks, messages = Counter(), Counter(), Counter()
    exchange: list[str] = []
    for line in out.splitlines():
        source, length, types = line.split("|")
        direction = "server->postgres" if int(source) != db_port else "postgres->server"
        if not int(length or 0):
            acks[direction] += 1
            continue
        segments[direction] += 1
        names = [t for t in types.split(",") if t]
        messages.update((direction, name) for name in names)
        if len(exchange) < 4:
            exchange.append(f"{direction}: {' + '.join(names)}")
    per = max(1, requests)
    return {"requests": requests, "connections": len(ports),
            "data_segments_per_request": {k: round(v / per, 2) for k, v in segments.items()},
            "pure_acks_per_request": {k: round(v / per, 2) for k, v in acks.items()},
            "messages_per_request": {f"{d}: {m}": round(v / per, 2)
                                     for (d, m), v in sorted(messages.items())},
            "first_request": exchange}


def protocol(bench: Bench, name: str, requests: int, folder: Path) -> dict:
    if not (shutil.which("tcpdump") and shutil.which("tshark")):
        return {"skipped": "tcpdump and tshark are needed (Debian: apt-get install tcpdump tshark)"}
    server = bench.start_server(name, f"{name}.protocol", "dbside: protocol")
    pcap = folder / f"{name}.pcap"
    db_port = db.db_port(bench.dsn)
    try:
        # --immediate-mode: without it libpcap hands packets over in blocks, and the packets of
        # the last block are lost when the capture is stopped
        capture = bench.supervisor.start(["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-w", str(pcap),
                                          PG_PORT_FILTER.format(port=db_port)], "tcpdump",
                                         folder / "tcpdump.log", folder / "tcpdump.log")
        time.sleep(1.0)
        f = bench.facts
        body_ids = range(f.items.min, f.items.min + 10)
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for i in range(requests):
            body = json.dumps({"user_id": f.users.min + i, "item_ids": [x + i for x in body_ids],
                               "top_k": 5})
            conn.request("POST", "/rank", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise BenchError(f"/rank answered {response.status}", name, "dbside: protocol")
            time.sleep(0.02)
        conn.close()
        time.sleep(0.5)
        ports = bench._db_client_ports(server.proc.pid)     # the harness's own lookup
        os.kill(capture.pid, signal.SIGINT)
        bench.supervisor.wait_measured(capture, timeout_s=10)
    finally:
        bench.stop_server(server)
    result = decode(pcap, db_port, ports, requests)
    pcap.unlink(missing_ok=True)
    return result


# -- the servers under load -------------------------------------------------------------------------
def backend_switches(procs: list[psutil.Process]) -> dict[int, tuple[int, int]]:
    out = {}
    for proc in procs:
        try:
            switches = proc.num_ctx_switches()
            out[proc.pid] = (switches.voluntary, switches.involuntary)
        except psutil.Error:
            continue
    return out


def count_syscalls(pids: list[int], seconds: float) -> subprocess.Popen | None:
    perf = shutil.which("perf")
    if perf is None or not pids:
        return None
    return subprocess.Popen([perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter",
                             "-e", "context-switches", "-p", ",".join(map(str, pids)), "--",
                             "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def parse_perf_stat(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            found[parts[2]] = float(parts[0])
    return found


def load(bench: Bench, name: str, concurrency: int, seconds: int, warmup: int) -> dict:
    server = bench.start_server(name, f"{name}.c{concurrency}", "dbside: load")
    run = Run(index=0, server=name, scenario="rank", items=10, concurrency=concurrency, repeat=0)
    try:
        bench.wrk_run(server, run, warmup, f"{name}.c{concurrency}.warmup", "dbside: warm-up")
        pid = server.proc.pid
        groups = PostgresGroups(bench.postmaster_pid, db.db_port(bench.dsn), lambda: [pid])

        def sampled_groups():
            return {"server": process_tree(pid), **groups()}

        backends = [p for p in groups()["db"] if p.pid != bench.postmaster_pid and
                    "(" in " ".join(p.cmdline())]
        before = backend_switches(backends)
        stat = count_syscalls([p.pid for p in backends], seconds + 0.5)
        sampler = bench.active_sampler = ResourceSampler(sampled_groups)
        sampler.start()
        data, _, _ = bench.wrk_run(server, run, seconds, f"{name}.c{concurrency}", "dbside: load")
        result = sampler.stop()
        bench.active_sampler = None
        after = backend_switches(backends)
        counted = parse_perf_stat(stat.communicate()[1]) if stat else {}
    finally:
        bench.stop_server(server)
    requests = int(data["requests"])
    rps = requests / (int(data["duration_us"]) / 1e6)
    voluntary = sum(after[p][0] - before[p][0] for p in after if p in before)
    involuntary = sum(after[p][1] - before[p][1] for p in after if p in before)
    s, d = result.groups["server"], result.groups.get("db")

    def per(x):
        return round(x / requests * 1e6, 1) if requests else None

    # perf stat counts over its own window (seconds + 0.5 s): scale by requests/s, not requests
    window = seconds + 0.5
    return {"server": name, "concurrency": concurrency, "requests": requests, "rps": round(rps, 1),
            "server_cpu_us_per_req": per(s.cpu_s),
            "db_cpu_us_per_req": per(d.cpu_s) if d else None,
            "db_user_us_per_req": per(d.user_s) if d else None,
            "db_system_us_per_req": per(d.system_s) if d else None,
            "db_backends": len(backends),
            "db_voluntary_switches_per_req": round(voluntary / requests, 2) if requests else None,
            "db_involuntary_switches_per_req": round(involuntary / requests, 2) if requests else None,
            "db_syscalls_per_req": (round(counted["raw_syscalls:sys_enter"] / (rps * window), 2)
                                    if "raw_syscalls:sys_enter" in counted and rps else None)}


# -- asyncpg alone ------------------------------------------------------------------------------------
async def _driver(dsn: str, variant: str, connections: int, seconds: float, rate: float | None,
                  facts) -> dict:
    """`connections` workers, each on its own connection (or, for the pool variants, acquiring one
    from an asyncpg pool of that size per transaction), closed loop or paced to `rate` in total."""
    import asyncpg
    import numpy as np

    from py_servers.db import _no_reset

    rng = np.random.default_rng(1)
    users = rng.integers(facts.users.min, facts.users.max + 1, size=200_000).tolist()
    items = rng.integers(facts.items.min, facts.items.max + 1, size=(2000, 10)).tolist()
    pool = None
    if variant.startswith("pool"):
        # py_servers' pool (no reset query on release) or asyncpg's default one (reset on release)
        reset = {"reset": _no_reset} if variant == "pool-no-reset" else {}
        pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections, **reset)
        conns = [None] * connections
    else:
        # no-statement-cache: asyncpg's statement_cache_size=0, every query parsed again
        options = {"statement_cache_size": 0} if variant == "no-statement-cache" else {}
        conns = [await asyncpg.connect(dsn, **options) for _ in range(connections)]
    done = 0
    stop_at = 0.0

    async def transaction(conn, uid, ids) -> None:
        if variant == "fetch":
            if await conn.fetch(contract.USER_SQL, uid):
                await conn.fetch(contract.ITEMS_SQL, ids)
        elif variant == "one-round-trip":
            await conn.fetch(ONE_ROUND_TRIP_SQL, uid, ids)
        elif await conn.fetchval(contract.USER_SQL, uid) is not None:   # as py_servers does
            await conn.fetch(contract.ITEMS_SQL, ids)

    async def worker(index: int, conn) -> None:
        nonlocal done
        k = index
        interval = connections / rate if rate else 0.0
        next_at = time.monotonic() + index * interval / connections
        while time.monotonic() < stop_at:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            uid, ids = users[k % len(users)], items[k % len(items)]
            k += connections
            if pool is not None:
                async with pool.acquire() as pooled:
                    await transaction(pooled, uid, ids)
            else:
                await transaction(conn, uid, ids)
            done += 1

    async def prepare(conn) -> None:    # every statement prepared once per connection, as servers do
        await conn.fetch(contract.USER_SQL, facts.users.min)
        await conn.fetchval(contract.USER_SQL, facts.users.min)
        await conn.fetch(contract.ITEMS_SQL, [facts.items.min])
        await conn.fetch(ONE_ROUND_TRIP_SQL, facts.users.min, [facts.items.min])

    if pool is not None:
        held = [await pool.acquire() for _ in range(connections)]
        for conn in held:
            await prepare(conn)
        for conn in held:
            await pool.release(conn)
    else:
        for conn in conns:
            await prepare(conn)
    groups = PostgresGroups(_postmaster(), db.db_port(dsn), lambda: [os.getpid()])
    sampler = ResourceSampler(lambda: groups())
    stop_at = time.monotonic() + seconds
    sampler.start()
    t0 = time.monotonic()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    elapsed = time.monotonic() - t0
    result = sampler.stop()
    if pool is not None:
        await pool.close()
    for conn in conns:
        if conn is not None:
            await conn.close()
    d = result.groups["db"]
    return {"variant": variant, "rate_target": rate, "connections": connections,
            "tx_per_s": round(done / elapsed, 1),
            "db_cpu_us_per_tx": round(d.cpu_s / done * 1e6, 1) if done else None,
            "db_user_us_per_tx": round(d.user_s / done * 1e6, 1) if done else None,
            "db_system_us_per_tx": round(d.system_s / done * 1e6, 1) if done else None}


def _postmaster() -> int | None:
    from rankbench import pg
    return pg.running_pid(pg.Cluster())


def driver(dsn: str, facts, variant: str, connections: int, seconds: float,
           rate: float | None) -> dict:
    return asyncio.run(_driver(dsn, variant, connections, seconds, rate, facts))


# -- command line -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling.dbside", description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="py-none,candle-no-model")
    parser.add_argument("--concurrency", default="32,4,1")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20, help="sequential requests captured")
    parser.add_argument("--rates", default="0,2000,600",
                        help="driver transactions/s (0: closed loop as fast as it goes)")
    parser.add_argument("--pool", type=int, default=8, help="--pool-size of the servers, and the "
                        "driver's connections (default 8, as in the bench)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: protocol,load,driver")
    parser.add_argument("--results", type=Path, default=config.ROOT / "results")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    servers = [s for s in args.servers.split(",") if s]
    settings = Settings(profile="dbside", servers=tuple(servers), items=(10,), concurrency=(32,),
                        repeats=1, duration_s=args.duration, warmup_s=2, ceiling=False,
                        pool_size=args.pool,
                        pgbench=False, verify=False, results_root=args.results)
    bench = Bench(settings)
    results: dict = {"started_at": utc(), "protocol": {}, "load": [], "driver": []}
    try:
        bench.check()
        if not bench.postmaster_pid:
            print("dbside: the database is not the private cluster: its processes cannot be "
                  "measured", file=sys.stderr)
            return 1
        folder = bench.folder = ProfileFolder(args.results, suffix="dbside")
        out = folder.path / "dbside.json"
        if "protocol" not in skip:
            for name in servers:
                results["protocol"][name] = protocol(bench, name, args.requests, folder.path)
                print(json.dumps({name: results["protocol"][name]}, indent=1), flush=True)
        if "load" not in skip:
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                for name in servers:
                    row = load(bench, name, concurrency, args.duration, 2)
                    results["load"].append(row)
                    print(json.dumps(row), flush=True)
        if "driver" not in skip:
            for rate in [float(r) for r in args.rates.split(",")]:
                for variant in DRIVER_VARIANTS:
                    row = driver(bench.dsn, bench.facts, variant, settings.pool_size,
                                 args.duration, rate or None)
                    results["driver"].append(row)
                    print(json.dumps(row), flush=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"dbside: {out}")
        return 0
    except BenchError as exc:
        for line in exc.describe():
            print(line.replace("bench: ", "dbside: ", 1), file=sys.stderr)
        return 1
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
