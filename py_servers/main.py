"""`python -m py_servers`: command line, sockets, worker processes.

--workers 1 serves from this process. --workers W > 1: this process binds W sockets to the same port
with SO_REUSEPORT (the kernel spreads connections over them), forks one worker per socket, and
supervises: a worker that dies after it was ready is restarted (its socket stays open in the parent,
so connections queue instead of being refused), a worker that fails to start stops the server.
SIGTERM or SIGINT: stop accepting, finish in-flight requests, close the pool, exit 0 within 5 s.

Each worker loads the model itself after the fork (no runtime thread pools are copied across a fork)
and starts listening only once the model is warm and the pool is connected.

--batching (the registry's micro-batching variants) coalesces each worker's concurrent /rank
requests (py_servers/batching.py); --max-batch, --max-wait-us and --batches-in-flight tune it.
"""
from __future__ import annotations

import os

# One thread per worker for every native pool that numpy/torch/onnxruntime might start on import.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from py_servers.backends import BACKENDS, BackendError, check_backend  # noqa: E402
from py_servers.stats import SharedStats  # noqa: E402
from rankbench import config, serverflags  # noqa: E402

MICRO_BATCHING = "micro-batching"   # the registry's variant facet of a --batching server
DEFAULT_MAX_BATCH = 64
MAX_MAX_BATCH = 1024
MAX_WAIT_US = 1_000_000
SHUTDOWN_GRACE_S = 3.0      # worker: time given to in-flight requests
SUPERVISOR_KILL_S = 4.5     # parent: SIGKILL what is still running after this


@dataclass(frozen=True)
class Settings(serverflags.CommonSettings):
    backend: str
    timers: bool
    batching: bool = False         # the micro-batching variant (py_servers/batching.py)
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_us: int = 0
    batches_in_flight: int | None = None     # total over the workers; None: --pool-size

    def batch_slots(self, worker: int) -> int:
        """--batches-in-flight is the total over all workers, split like --pool-size (so never more
        than a worker's pool share); default: the pool share."""
        total = self.pool_size if self.batches_in_flight is None else self.batches_in_flight
        return serverflags.share(total, self.workers, worker)


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m py_servers",
        description="rankbench Python server (uvloop + httptools + asyncpg + orjson); "
                    "see docs/contract.md")
    serverflags.add_common(parser)
    parser.add_argument("--backend", required=True, choices=sorted(BACKENDS),
                        help="model runtime; `none` skips inference (the DB-and-HTTP floor)")
    parser.add_argument("--no-timers", action="store_true",
                        help="do not time stages (to measure what the timers cost); "
                             "/stats still counts requests and errors")
    batching = parser.add_argument_group(
        "micro-batching", "coalesce concurrent /rank requests: one database round trip and one "
                          "inference call per batch (py_servers/batching.py)")
    batching.add_argument("--batching", action="store_true",
                          help="serve /rank in batches (the registry's micro-batching variants)")
    batching.add_argument("--max-batch", type=int, default=None, metavar="N",
                          help=f"requests per batch at most (default {DEFAULT_MAX_BATCH})")
    batching.add_argument("--max-wait-us", type=int, default=None, metavar="US",
                          help="wait up to US microseconds for a fuller batch once a slot is free "
                               "(default 0: no timer, whatever is queued goes)")
    batching.add_argument("--batches-in-flight", type=int, default=None, metavar="N",
                          help="batches served at once, in total over the workers and split like "
                               "--pool-size; at most --pool-size (default: --pool-size)")
    args = parser.parse_args(argv)

    def mismatch(spec) -> str | None:
        if spec.language != "python" or spec.backend != args.backend:
            return (f"as a {spec.language} server with backend {spec.backend}, "
                    f"not a python server with --backend {args.backend}")
        if (spec.variant == MICRO_BATCHING) != args.batching:
            return (f"with variant {spec.variant}: " + (
                "it needs --batching" if not args.batching
                else "--batching belongs to a micro-batching variant"))
        return None

    api_key = serverflags.check_common(parser, args, mismatch)
    name = args.server_name
    if not args.batching:
        given = [flag for flag, value in (("--max-batch", args.max_batch),
                                          ("--max-wait-us", args.max_wait_us),
                                          ("--batches-in-flight", args.batches_in_flight))
                 if value is not None]
        if given:
            parser.error(f"{', '.join(given)} only apply with --batching")
    max_batch = DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch
    max_wait_us = 0 if args.max_wait_us is None else args.max_wait_us
    if not 1 <= max_batch <= MAX_MAX_BATCH:
        parser.error(f"--max-batch must be 1..{MAX_MAX_BATCH}, got {max_batch}")
    if not 0 <= max_wait_us <= MAX_WAIT_US:
        parser.error(f"--max-wait-us must be 0..{MAX_WAIT_US}, got {max_wait_us}")
    if args.batches_in_flight is not None and not 1 <= args.batches_in_flight <= args.pool_size:
        parser.error(f"--batches-in-flight must be 1..--pool-size ({args.pool_size}): a batch "
                     f"holds one pooled connection, got {args.batches_in_flight}")
    return Settings(server_name=name, backend=args.backend, host=args.host, port=args.port,
                    dsn=args.dsn or config.dsn(), workers=args.workers, pool_size=args.pool_size,
                    model_dir=args.model_dir, timers=not args.no_timers, api_key=api_key,
                    batching=args.batching, max_batch=max_batch, max_wait_us=max_wait_us,
                    batches_in_flight=args.batches_in_flight)


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to one address with SO_REUSEPORT (not yet listening).

    SO_REUSEPORT would also let us join a port that another server already serves, silently
    splitting its traffic; a plain bind first makes that an error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        port = probe.getsockname()[1]
    except OSError as exc:
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    finally:
        probe.close()
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((address[0], port, *address[2:]))
        except OSError as exc:
            raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


# -- one worker ---------------------------------------------------------------------------------
def run_worker(settings: Settings, index: int, sock: socket.socket, shared: SharedStats) -> int:
    import uvloop

    from py_servers.backends import load_backend, runtime_threads, warm_up

    name = settings.server_name
    try:
        backend = load_backend(settings.backend, settings.model_dir)
        warm_up(backend)
    except BackendError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    # After the warm-up: some pools (torch's inter-op pool) only exist once an op has run.
    shared.set_runtime_threads(index, runtime_threads(backend))
    return uvloop.run(_serve(settings, index, sock, shared, backend))


async def _serve(settings: Settings, index: int, sock, shared: SharedStats, backend) -> int:
    import asyncio

    from py_servers.app import App
    from py_servers.db import Database
    from py_servers.http import ApiKeyProtocol, HttpProtocol, ResponseHead

    loop = asyncio.get_running_loop()
    name = settings.server_name
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    pool_size = settings.pool_share(index)
    shared.set_worker(index, pid=os.getpid(), pool_size=pool_size)
    database = Database(settings.dsn, pool_size, batching=settings.batching)
    try:
        problem = await database.open()
    except RuntimeError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"{name}: worker {index}: database unavailable at start ({problem}); "
              f"answering 503 until it returns", file=sys.stderr)
    if stop.is_set():
        await database.close(1.0)
        return 0

    app = App(server_name=name, backend=backend, database=database, shared_stats=shared,
              recorder=shared.recorder(index, timers=settings.timers), worker=index,
              workers=settings.workers,
              pool_total=sum(settings.pool_share(w) for w in range(settings.workers)),
              api_key=settings.api_key)
    if settings.batching:
        from py_servers.batching import Batcher

        slots = [settings.batch_slots(w) for w in range(settings.workers)]
        app.enable_batching(
            Batcher(database=database, infer=backend.infer, recorder=app.recorder,
                    spawn=app._spawn, max_batch=settings.max_batch,
                    max_wait_us=settings.max_wait_us, slots=slots[index]),
            {"max_batch": settings.max_batch, "max_wait_us": settings.max_wait_us,
             "batches_in_flight": sum(slots), "batches_in_flight_per_worker": slots})
    head = ResponseHead(name)
    # Everything allocated so far (the runtime's modules: ~190k objects with torch) lives as long
    # as the process. Freezing it keeps the cyclic collector from walking it again: a full
    # collection with torch loaded takes 150-350 ms on this machine, a pause in mid-benchmark.
    gc.collect()
    gc.freeze()
    protocol = HttpProtocol if settings.api_key is None else ApiKeyProtocol
    server = await loop.create_server(lambda: protocol(app, head), sock=sock, backlog=1024)
    shared.set_ready(index, True)

    def housekeeping():
        head.refresh_date()
        now = time.monotonic()
        for connection in list(app.connections):
            connection.check_timeouts(now)
        timer[0] = loop.call_later(1.0, housekeeping)

    timer = [loop.call_later(1.0, housekeeping)]
    await stop.wait()

    # Graceful stop: no new connections, idle keep-alive connections closed, busy ones closed
    # after their last response, then the pool.
    shared.set_ready(index, False)
    server.close()
    app.draining = True
    for connection in list(app.connections):
        connection.close_if_idle()
    deadline = loop.time() + SHUTDOWN_GRACE_S
    while (app.tasks or app.connections) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    timer[0].cancel()
    for connection in list(app.connections):
        connection.abort()
    for task in list(app.tasks):
        task.cancel()
    await database.close(1.0)
    return 0


# -- supervisor ---------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if the supervisor dies, so no orphan keeps the port."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(settings: Settings, sockets: list[socket.socket], shared: SharedStats) -> int:
    name = settings.server_name
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    parent = os.getpid()
    children: dict[int, int] = {}
    restarts: list[float] = []

    def spawn(index: int) -> None:
        shared.set_ready(index, False)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
                _die_with_parent()
                if os.getppid() != parent:
                    os._exit(1)
                for other, sock in enumerate(sockets):
                    if other != index:
                        sock.close()
                code = run_worker(settings, index, sockets[index], shared)
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    print(f"{name}: {exc.code}", file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    for index in range(settings.workers):
        spawn(index)

    stopping = False
    failed = False
    deadline = 0.0
    while children:
        wait = 0.5 if not stopping else max(0.01, deadline - time.monotonic())
        info = signal.sigtimedwait(watched, wait)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
            stopping = True
            deadline = time.monotonic() + SUPERVISOR_KILL_S
            for sock in sockets:      # closing our copies lets the kernel stop routing to them
                sock.close()
            for pid in children:
                os.kill(pid, signal.SIGTERM)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                failed = failed or code != 0
                continue
            if not shared.is_ready(index):
                print(f"{name}: worker {index} failed to start (exit {code}); stopping",
                      file=sys.stderr)
                failed = stopping = True
                deadline = time.monotonic() + SUPERVISOR_KILL_S
                for other in children:
                    os.kill(other, signal.SIGTERM)
                continue
            now = time.monotonic()
            restarts[:] = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 5:
                print(f"{name}: workers died {len(restarts)} times in a minute; stopping",
                      file=sys.stderr)
                failed = stopping = True
                deadline = now + SUPERVISOR_KILL_S
                for other in children:
                    os.kill(other, signal.SIGTERM)
                continue
            print(f"{name}: worker {index} (pid {pid}) exited with {code}; restarting",
                  file=sys.stderr)
            spawn(index)
        if stopping and children and time.monotonic() >= deadline:
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            failed = True
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        check_backend(settings.backend, settings.model_dir)
    except BackendError as exc:
        print(f"{settings.server_name}: {exc}", file=sys.stderr)
        return 1
    try:
        sockets = bind_sockets(settings.host, settings.port, settings.workers)
    except SystemExit as exc:
        print(f"{settings.server_name}: {exc.code}", file=sys.stderr)
        return 1
    shared = SharedStats(settings.workers, max_batch=settings.max_batch if settings.batching else 0)
    if settings.workers == 1:
        return run_worker(settings, 0, sockets[0], shared)
    return supervise(settings, sockets, shared)
