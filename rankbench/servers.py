"""The registry of servers that speak the contract: the one place that names a server.

A server joins the benchmark, the conformance suite, the fault suite, `make serve` and the reports
by adding one entry here. Each entry describes the server by its facets (language, HTTP stack,
runtime, interpreter, variant), its role (a model server or a floor without a model) and its floor,
its default port, what it needs before it can start, how long it may take to start and stop, and
how to build its command line from the contract's common flags. Nothing else builds or writes a
server name: the analysis compares servers by their facets (`isolated_facet`), never by name.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from rankbench.config import ARTIFACTS_DIR, CANDLE_BINARY, ROOT

# The facets that say what a server is made of. Two servers that differ in exactly one of them
# isolate that one thing (see `isolated_facet`).
FACETS = ("language", "http", "runtime", "interpreter", "variant")
# Facets that belong to a language: no HTTP stack or interpreter is shared between Python and Rust,
# so a pair of other languages necessarily differs in these too, and they count as one difference.
LANGUAGE_BOUND = ("http", "interpreter")
PER_REQUEST = "per-request"          # the variant of every server that answers each request alone
# The studies a server takes part in by default: `make bench` (main), bench-ladder (ladder),
# bench-batch (batch), bench-python (python). A profile runs its study's servers; SERVERS= overrides.
MAIN, LADDER, BATCH, PYTHONS = "main", "ladder", "batch", "python"
STUDIES = (MAIN, LADDER, BATCH, PYTHONS)
NO_MODEL = "none"                    # the runtime facet of a floor


@dataclass(frozen=True)
class Prerequisite:
    """A file or an importable Python module a server needs, and the make target that makes it."""
    what: str                 # "file" or "module"
    target: str               # a path, or a module name
    make: str                 # e.g. "make build"

    def missing(self, python: str | None = None) -> bool:
        if self.what == "file":
            return not Path(self.target).exists()
        if python in (None, sys.executable):
            return importlib.util.find_spec(self.target) is None
        if not Path(python).exists():      # another environment's python, gone: so is the module
            return True
        import subprocess
        probe = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({self.target!r}) is None)"
        return subprocess.run([python, "-c", probe], capture_output=True).returncode != 0

    def describe(self) -> str:
        shown = self.target
        if self.what == "file":
            path = Path(self.target)
            shown = str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)
        return f"{shown} ({self.what}; run `{self.make}`)"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    language: str                          # python | rust
    http: str                              # uvloop-httptools | actix | ...
    runtime: str                           # torch | onnxruntime | candle | none
    interpreter: str | None                # cpython-3.11 for a Python server; None for native code
    backend: str                           # what the server reports as `backend` in /stats
    default_port: int
    build_command: Callable[[list[str]], list[str]] = field(repr=False, compare=False)
    variant: str = PER_REQUEST             # e.g. "micro-batching"
    floor: str | None = None               # the same stack without a model (None for a floor)
    prerequisites: tuple[Prerequisite, ...] = ()
    startup_timeout_s: float = 60.0        # until /health answers 200 on a busy 2-core machine
    stop_timeout_s: float = 10.0           # SIGTERM to exit
    notes: str = ""
    studies: tuple[str, ...] = ()          # the bench profiles that run it by default (STUDIES)

    @property
    def role(self) -> str:
        return "floor" if self.runtime == NO_MODEL else "model"

    @property
    def real_scores(self) -> bool:
        """A floor answers score 0.0 for every item; a model server computes real scores."""
        return self.role == "model"

    @property
    def needs(self) -> tuple[Path, ...]:
        return tuple(Path(p.target) for p in self.prerequisites if p.what == "file")

    def facets(self) -> dict[str, str | None]:
        return {f: getattr(self, f) for f in FACETS}

    def missing(self) -> list[Prerequisite]:
        python = self.build_command([])[0] if self.language == "python" else None
        return [p for p in self.prerequisites if p.missing(python)]

    def describe(self) -> dict:
        """The registry facts of this server, as the harness writes them into env.json."""
        return {"name": self.name, **self.facets(), "role": self.role, "floor": self.floor,
                "backend": self.backend, "default_port": self.default_port,
                "real_scores": self.real_scores, "notes": self.notes,
                "prerequisites": [p.describe() for p in self.prerequisites],
                "startup_timeout_s": self.startup_timeout_s, "stop_timeout_s": self.stop_timeout_s,
                "studies": list(self.studies)}

    def command(self, *, host: str = "127.0.0.1", port: int | None = None, dsn: str,
                workers: int = 1, pool_size: int = 8,
                model_dir: Path | str = ARTIFACTS_DIR, extra: tuple[str, ...] = ()) -> list[str]:
        common = ["--server-name", self.name, "--host", host,
                  "--port", str(self.default_port if port is None else port), "--dsn", dsn,
                  "--workers", str(workers), "--pool-size", str(pool_size),
                  "--model-dir", str(model_dir)]
        return self.build_command(common) + list(extra)


def _interpreter_facet(version: tuple[int, int] = sys.version_info[:2]) -> str:
    return f"cpython-{version[0]}.{version[1]}"


def python_server(backend: str, python: str = sys.executable
                  ) -> Callable[[list[str]], list[str]]:
    return lambda common: [python, "-m", "py_servers", "--backend", backend, *common]


def rust_server(binary: Path, *flags: str) -> Callable[[list[str]], list[str]]:
    return lambda common: [str(binary), *common, *flags]


def framework_server(stack: str, backend: str, *flags: str, python: str = sys.executable
                     ) -> Callable[[list[str]], list[str]]:
    """framework_servers: FastAPI + uvicorn (`--stack seed`: the published stack)."""
    return lambda common: [python, "-m", "framework_servers", "--stack", stack,
                           "--backend", backend, *common, *flags]


_PY = dict(language="python", http="uvloop-httptools", interpreter=_interpreter_facet())
_RUST = dict(language="rust", http="actix", interpreter=None,
             prerequisites=(Prerequisite("file", str(CANDLE_BINARY), "make build"),),
             startup_timeout_s=30.0)
_PY_CANDLE_EXT = Prerequisite("module", "rankbench_candle", "make build")
# The Rust server on ONNX Runtime needs the binary and the libonnxruntime of .venv's onnxruntime.
_RUST_ONNX = dict(_RUST, prerequisites=(
    *_RUST["prerequisites"],
    Prerequisite("file", str(max(
        ROOT.glob(".venv/lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so.*"),
        default=ROOT / ".venv/lib/python3/site-packages/onnxruntime/capi/libonnxruntime.so")),
        "make setup")))
PUBLISHED_STACK = "published-stack"
_FRAMEWORK = dict(language="python", http="fastapi-uvicorn", interpreter=_interpreter_facet(),
                  prerequisites=tuple(Prerequisite("module", m, "make setup")
                                      for m in ("fastapi", "uvicorn", "sqlalchemy", "psycopg")))

REGISTRY: tuple[ServerSpec, ...] = (
    ServerSpec("py-torch", studies=(MAIN, BATCH),
               runtime="torch", backend="torch", default_port=8001, floor="py-none",
               build_command=python_server("torch"), startup_timeout_s=90.0, **_PY),
    ServerSpec("py-onnx", studies=(MAIN, LADDER, BATCH, PYTHONS),
               runtime="onnxruntime", backend="onnx", default_port=8002, floor="py-none",
               build_command=python_server("onnx"), **_PY),
    ServerSpec("py-candle", studies=(MAIN, LADDER, BATCH, PYTHONS),
               runtime="candle", backend="candle", default_port=8004, floor="py-none",
               build_command=python_server("candle"), prerequisites=(_PY_CANDLE_EXT,),
               notes="candle_server's own model code called through PyO3", **_PY),
    ServerSpec("py-none", studies=(MAIN, BATCH, PYTHONS),
               runtime=NO_MODEL, backend="none", default_port=8005,
               build_command=python_server("none"), notes="the DB-and-HTTP floor", **_PY),
    ServerSpec("candle", studies=(MAIN, LADDER, BATCH),
               runtime="candle", backend="candle", default_port=8003,
               floor="candle-no-model", build_command=rust_server(CANDLE_BINARY), **_RUST),
    ServerSpec("candle-no-model", studies=(MAIN, BATCH),
               runtime=NO_MODEL, backend="none", default_port=8006,
               build_command=rust_server(CANDLE_BINARY, "--no-model"),
               notes="the DB-and-HTTP floor", **_RUST),
    # The published study's stack and the rungs from it down to py-onnx (issue 13).
    ServerSpec("seed-torch", studies=(LADDER,),
               runtime="torch", backend="torch", default_port=8011,
               variant=PUBLISHED_STACK,
               build_command=framework_server("seed", "torch", "--access-log"),
               notes="the published stack: sync def + thread pool, SQLAlchemy ORM (two sessions), "
                     "pydantic, GZip, Security dependency, default runtime threads, torch.sigmoid",
               **_FRAMEWORK, startup_timeout_s=120.0),
    ServerSpec("seed-onnx", studies=(LADDER,),
               runtime="onnxruntime", backend="onnx", default_port=8012,
               variant=PUBLISHED_STACK,
               build_command=framework_server("seed", "onnx", "--access-log"),
               notes="the published stack with ONNX Runtime's defaults (threads = cores, spinning)",
               **_FRAMEWORK, startup_timeout_s=120.0),
    ServerSpec("seed-onnx-1t", studies=(LADDER,),
               runtime="onnxruntime", backend="onnx", default_port=8013,
               variant=PUBLISHED_STACK + "-1t",
               build_command=framework_server("seed", "onnx", "--access-log",
                                              "--runtime-threads", "one"),
               notes="the published stack, ONNX Runtime with one intra-op thread, no spinning",
               **_FRAMEWORK, startup_timeout_s=120.0),
    ServerSpec("fastapi-onnx", studies=(LADDER,),
               runtime="onnxruntime", backend="onnx", default_port=8014,
               build_command=framework_server("fastapi", "onnx"),
               notes="FastAPI + uvicorn alone: async def, py_servers' asyncpg code, orjson, "
                     "one intra-op thread", **_FRAMEWORK),
    # Micro-batching (issue 15): py_servers --batching, ports the per-request ports + 20.
    ServerSpec("py-torch-batch", studies=(BATCH,),
               runtime="torch", backend="torch", default_port=8021,
               variant="micro-batching", floor="py-none-batch",
               build_command=lambda common: python_server("torch")(common) + ["--batching"],
               startup_timeout_s=90.0, notes="py-torch with requests coalesced into batches", **_PY),
    ServerSpec("py-onnx-batch", studies=(BATCH,),
               runtime="onnxruntime", backend="onnx", default_port=8022,
               variant="micro-batching", floor="py-none-batch",
               build_command=lambda common: python_server("onnx")(common) + ["--batching"],
               notes="py-onnx with requests coalesced into batches", **_PY),
    ServerSpec("py-candle-batch", studies=(BATCH,),
               runtime="candle", backend="candle", default_port=8024,
               variant="micro-batching", floor="py-none-batch",
               build_command=lambda common: python_server("candle")(common) + ["--batching"],
               prerequisites=(_PY_CANDLE_EXT,),
               notes="py-candle with requests coalesced into batches", **_PY),
    ServerSpec("py-none-batch", studies=(BATCH,),
               runtime=NO_MODEL, backend="none", default_port=8025,
               variant="micro-batching",
               build_command=lambda common: python_server("none")(common) + ["--batching"],
               notes="the DB-and-HTTP floor, requests coalesced into batches", **_PY),
    # Rust on ONNX Runtime (issue 17): candle_server --runtime onnx runs ranknet.onnx through the
    # ort crate on the libonnxruntime that .venv's onnxruntime package ships (py-onnx's very build,
    # loaded at run time; the binary finds it in .venv itself and reports its path in /stats).
    ServerSpec("rust-onnx", studies=(MAIN,),
               runtime="onnxruntime", backend="onnx", default_port=8007,
               floor="candle-no-model",
               build_command=rust_server(CANDLE_BINARY, "--runtime", "onnx"),
               notes="candle_server --runtime onnx: the ort crate on .venv's libonnxruntime",
               **_RUST_ONNX),
    # Micro-batching in Rust (issue 15): candle_server --batching, ports the per-request ports + 30.
    ServerSpec("candle-batch", studies=(BATCH,),
               runtime="candle", backend="candle", default_port=8033,
               variant="micro-batching", floor="candle-no-model-batch",
               build_command=rust_server(CANDLE_BINARY, "--batching"),
               notes="candle with requests coalesced into batches", **_RUST),
    ServerSpec("candle-no-model-batch", studies=(BATCH,),
               runtime=NO_MODEL, backend="none", default_port=8036,
               variant="micro-batching",
               build_command=rust_server(CANDLE_BINARY, "--no-model", "--batching"),
               notes="the DB-and-HTTP floor, requests coalesced into batches", **_RUST),
    ServerSpec("rust-onnx-batch", studies=(BATCH,),
               runtime="onnxruntime", backend="onnx", default_port=8037,
               variant="micro-batching", floor="candle-no-model-batch",
               build_command=rust_server(CANDLE_BINARY, "--runtime", "onnx", "--batching"),
               notes="rust-onnx with requests coalesced into batches",
               **_RUST_ONNX),
)

SERVERS: dict[str, ServerSpec] = {spec.name: spec for spec in REGISTRY}


def get(name: str) -> ServerSpec:
    try:
        return SERVERS[name]
    except KeyError:
        known = ", ".join(SERVERS)
        raise SystemExit(f"unknown server {name!r}; known servers: {known}") from None


def study(name: str, registry: dict[str, ServerSpec] | None = None) -> tuple[str, ...]:
    """The servers of a study, in registry order."""
    registry = SERVERS if registry is None else registry
    return tuple(n for n, spec in registry.items() if name in spec.studies)


# The ladder study's rungs in order, from the published stack down to Candle: each changes one thing
# from the one before it (analysis: "From the published stack to Candle"). seed-torch stands beside
# the first rung (the published stack on PyTorch). The published study's requests/s (2 cores, 10
# Locust users): what the report sets its measured ratios beside.
LADDER_RUNGS = ("seed-onnx", "seed-onnx-1t", "fastapi-onnx", "py-onnx", "py-candle", "candle")
LADDER_BESIDE = ("seed-torch",)
PUBLISHED_RPS = {"seed-torch": 222.0, "seed-onnx": 80.0, "candle": 994.0}
PUBLISHED_CONCURRENCY = 10


def with_name(spec: ServerSpec, name: str, port: int) -> ServerSpec:
    """The same server registered under another name and port (the recipe test uses it)."""
    return replace(spec, name=name, default_port=port)


# -- what a pair of servers isolates ------------------------------------------------------------
def differing_facets(a: ServerSpec | dict, b: ServerSpec | dict) -> list[str]:
    fa, fb = _facets(a), _facets(b)
    return [f for f in FACETS if fa.get(f) != fb.get(f)]


def isolated_facet(a: ServerSpec | dict, b: ServerSpec | dict) -> str | None:
    """The one facet a pair differs in, or None when it differs in none or in more than one.

    A difference of language counts once with the facets bound to a language (HTTP stack,
    interpreter): py-candle vs candle isolates the server layer."""
    diff = differing_facets(a, b)
    if "language" in diff:
        diff = [f for f in diff if f not in LANGUAGE_BOUND]
    return diff[0] if len(diff) == 1 else None


def pair_sentence(a: ServerSpec | dict, b: ServerSpec | dict) -> str | None:
    """One sentence saying what the pair isolates, or None when it isolates no single facet."""
    facet = isolated_facet(a, b)
    if facet is None:
        return None
    fa, fb = _facets(a), _facets(b)
    na, nb = _name(a), _name(b)
    if facet == "language":
        what = (f"same runtime ({fa['runtime']}), other language ({fa['language']}, {fa['http']} vs "
                f"{fb['language']}, {fb['http']}): the server layer")
    elif facet == "runtime":
        if NO_MODEL in (fa["runtime"], fb["runtime"]):
            model = fa["runtime"] if fb["runtime"] == NO_MODEL else fb["runtime"]
            what = f"same stack, with and without a model ({model}): the model's cost"
        else:
            what = f"same server layer, other runtime ({fa['runtime']} vs {fb['runtime']}): the runtime"
    elif facet == "http":
        what = f"same language and runtime, other HTTP stack ({fa['http']} vs {fb['http']}): the framework"
    elif facet == "interpreter":
        what = f"same code, other interpreter ({fa['interpreter']} vs {fb['interpreter']}): the interpreter"
    else:
        what = f"same stack, {fa['variant']} vs {fb['variant']}: the variant"
    return f"{na} vs {nb}: {what}"


def _facets(s: ServerSpec | dict) -> dict:
    return s.facets() if isinstance(s, ServerSpec) else {f: s.get(f) for f in FACETS}


def _name(s: ServerSpec | dict) -> str:
    return s.name if isinstance(s, ServerSpec) else s["name"]


__all__ = ["FACETS", "NO_MODEL", "PER_REQUEST", "Prerequisite", "ServerSpec", "REGISTRY",
           "SERVERS", "get", "with_name", "differing_facets", "isolated_facet", "pair_sentence",
           "python_server", "rust_server", "ROOT"]


# -- command line: `make list-servers`, `make serve SERVER=<name>` --------------------------------
def _table() -> str:
    header = ("name", "language", "http", "runtime", "interpreter", "variant", "role", "floor",
              "port", "built")
    rows = [header]
    for spec in REGISTRY:
        missing = spec.missing()
        built = "yes" if not missing else "no: " + "; ".join(p.describe() for p in missing)
        rows.append((spec.name, spec.language, spec.http, spec.runtime, spec.interpreter or "-",
                     spec.variant, spec.role, spec.floor or "-", str(spec.default_port), built))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    from rankbench import config

    parser = argparse.ArgumentParser(prog="python -m rankbench.servers",
                                     description="the server registry")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registry as a table")
    sub.add_parser("names", help="print the registered names, comma-separated")
    serve = sub.add_parser("serve", help="run one server in the foreground on its port")
    serve.add_argument("name")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--pool-size", type=int, default=8)
    serve.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "list":
        print(_table())
        return 0
    if args.command == "names":
        print(",".join(SERVERS))
        return 0
    spec = SERVERS.get(args.name)
    if spec is None:
        print(f"unknown server {args.name!r}; known servers: {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    missing = spec.missing()
    if missing:
        print(f"{spec.name} needs {missing[0].describe()}", file=sys.stderr)
        return 1
    argv_ = spec.command(port=args.port, dsn=config.dsn(), workers=args.workers,
                         pool_size=args.pool_size)
    print(" ".join(argv_), file=sys.stderr, flush=True)
    os.chdir(ROOT)
    os.execv(argv_[0], argv_)
    return 0  # not reached


# -- the Python servers on other CPython versions (issue 18: `make pythons PYTHONS=3.13`) ---------
# Generated, not listed: one `<server>@<major>.<minor>` per base Python server and environment that
# `make pythons` completed (rankbench.pythons reads .venvs/py*/rankbench-python.json), equal to its
# base server in everything but the interpreter facet, the command's python, the name, the port and
# the floor (the floor on the same interpreter), so that py-onnx vs py-onnx@3.13 isolates the
# interpreter. py-torch@<version> only where torch was installed (PYTHON_TORCH=1).
_RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "candle": "rankbench_candle"}


def interpreter_variants(registry: tuple[ServerSpec, ...], envs) -> tuple[ServerSpec, ...]:
    """The variants of `registry`'s per-request uvloop servers on each of `envs`
    (rankbench.pythons.PythonEnv). Port: 8000 + 100 x minor + the base port's last two digits
    (py-onnx@3.13: 9302)."""
    from rankbench import pythons

    base = [s for s in registry if s.language == "python" and s.http == _PY["http"]
            and s.variant == PER_REQUEST and s.interpreter == _interpreter_facet()]
    variants = []
    for env in envs:
        for spec in base:
            module = _RUNTIME_MODULES.get(spec.runtime)
            if module == "torch" and not env.has("torch"):
                continue
            versions = ", ".join(f"{p} {env.version_of(p)}" for p in
                                 pythons.STACK_PACKAGES + (module or "",) if env.has(p))
            needs = (Prerequisite("file", str(env.python), env.make),
                     *((Prerequisite("module", module, env.make),) if module else ()))
            variants.append(replace(
                spec, name=f"{spec.name}@{env.tag}", interpreter=env.interpreter,
                studies=(PYTHONS,) if PYTHONS in spec.studies else (),
                default_port=8000 + 100 * env.minor + spec.default_port % 100,
                floor=f"{spec.floor}@{env.tag}" if spec.floor else None,
                build_command=python_server(spec.backend, python=str(env.python)),
                prerequisites=needs,
                notes="; ".join(filter(None, (spec.notes, f"CPython {env.version} in "
                                              f"{pythons.relative(env.directory)} ({versions})")))))
    return tuple(variants)


def _register_interpreter_variants() -> None:
    global REGISTRY
    from rankbench import pythons

    variants = tuple(v for v in interpreter_variants(REGISTRY, pythons.environments())
                     if v.name not in SERVERS)
    REGISTRY = REGISTRY + variants
    SERVERS.update((v.name, v) for v in variants)


_register_interpreter_variants()


if __name__ == "__main__":
    raise SystemExit(main())
