"""Read a results folder (`env.json` + `runs.jsonl` + `verify.json`) into validated records.

Every problem a user can cause (missing folder, unknown schema, a malformed line, a missing key, a
histogram that does not decode) becomes one `ResultsError` whose message names the file, the line and
the key, so the CLI can print it as a single line. Records are keyed by
(server, scenario, candidates, concurrency, repeat) and never found by position.

Schemas 1 and 2 (rankbench.contract.SCHEMA_HISTORY) are read into one model: what schema 2 records
(2xx responses, validity, cores used over the load window, bytes per response) is derived here from
schema 1's keys by the same definitions, so the rest of the analysis does not ask which schema it
reads. What schema 1 cannot tell (position in the run order, stage histograms, calibration) stays
missing. Servers are described by their registry facets (language, runtime, role, floor...): from
env.json, or for results that predate them from `rankbench.servers.SERVERS` by name.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rankbench import servers as registry
from rankbench.contract import ERROR_KINDS, MEASURED_STAGES, STAGES, SUPPORTED_SCHEMAS
from rankbench.histogram import Histogram, HistogramError, parse as parse_histogram

RUNS_FILE = "runs.jsonl"
ENV_FILE = "env.json"
VERIFY_FILE = "verify.json"

HANDLER_TOTAL = STAGES[-1]       # "total": the whole handler
RESOURCE_SIDES = ("server", "db", "load")
SOCKET_ERRORS = tuple(kind for kind in ERROR_KINDS if kind != "status")

# Reference runs (no HTTP server) are told apart by the client that made them.
CEILING = "ceiling"              # rankbench-ceiling: the servers' own database work
PGBENCH = "pgbench"              # pgbench, text results: a labelled reference, not a bound
REFERENCE_TOOLS = {"rankbench-ceiling": CEILING, "pgbench": PGBENCH}

# What the analysis reads of a server's registry facts (ServerSpec.describe()).
FACET_KEYS = (*registry.FACETS, "role", "floor", "real_scores")

# Numeric keys this analysis reads; they must be numbers when present.
LATENCY_KEYS = ("mean", "stdev", "max", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99")
STAGE_KEYS = ("count", "sum_us", "mean_us", "p50_us", "p90_us", "p99_us", "max_us")
RESOURCE_KEYS = ("cpu_s", "cpu_us_per_req", "rss_peak_mb", "cores_used", "user_s", "system_s")


class ResultsError(Exception):
    """A results folder that cannot be analysed; the message is one line meant for a person."""


@dataclass(frozen=True, order=True)
class Config:
    """One measured configuration: what every server in it was asked to do."""

    scenario: str
    candidates: int
    concurrency: int

    @property
    def label(self) -> str:
        items = "item" if self.candidates == 1 else "items"
        scenario = "" if self.scenario == "rank" else f"{self.scenario}, "
        return f"{scenario}{self.candidates} {items}/request, concurrency {self.concurrency}"

    @property
    def slug(self) -> str:
        """File-name friendly form, e.g. `rank_n10_c32`."""
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.scenario)
        return f"{safe}_n{self.candidates}_c{self.concurrency}"


@dataclass(frozen=True)
class Run:
    """One measured run (one line of runs.jsonl), validated; `record` keeps every original key."""

    source: str  # "path:line", for messages
    record: dict[str, Any] = field(repr=False)
    schema: int
    server: str
    backend: str
    scenario: str
    candidates: int
    concurrency: int
    repeat: int
    duration_s: float
    tool: str
    requests: float
    rps: float                              # every response per second
    ok: float                               # 2xx responses
    goodput_rps: float                      # 2xx responses per second
    valid: bool
    invalid_reasons: tuple[str, ...] = ()
    workers: int | None = None
    pool_size: int | None = None
    top_k: int | None = None
    warmup_s: float | None = None
    started_at: str | None = None
    non2xx: float = 0
    client_duration_s: float | None = None  # the load window, measured by the load generator
    client_threads: int | None = None       # load generator threads, when recorded
    position: int | None = None             # place in its repeat's server order
    order: tuple[str, ...] | None = None    # that order
    bytes_per_response: float | None = None
    runtime_threads: dict[str, Any] | None = None
    errors: dict[str, float] = field(default_factory=dict)
    latency_us: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    resources: dict[str, dict[str, float] | None] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # Latency histograms in microseconds: "client" and "stage:<name>" (rankbench.histogram).
    histograms: dict[str, Histogram] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.server, self.scenario, self.candidates, self.concurrency, self.repeat)

    @property
    def config(self) -> Config:
        return Config(self.scenario, self.candidates, self.concurrency)

    @property
    def reference(self) -> str | None:
        """CEILING or PGBENCH for a run of the database alone (no HTTP server), else None."""
        return REFERENCE_TOOLS.get(self.tool)

    @property
    def is_reference(self) -> bool:
        return self.reference is not None

    @property
    def label(self) -> str:
        return f"{self.server} ({self.config.label}, repeat {self.repeat})"

    def side(self, group: str, key: str) -> float | None:
        figures = self.resources.get(group)
        return figures.get(key) if figures else None

    @property
    def load_window_s(self) -> float:
        """The measured load window: the load generator's own duration, else the planned one.
        Not the harness's sampling window, which also covers the load generator's start-up and its
        end-of-run histogram dump (and so would understate cores used)."""
        return self.client_duration_s or self.duration_s

    def cores_used(self, group: str) -> float | None:
        recorded = self.side(group, "cores_used")
        if recorded is not None:
            return recorded
        cpu_s = self.side(group, "cpu_s")
        return cpu_s / self.load_window_s if cpu_s is not None else None

    def cpu_us_per_req(self, group: str) -> float | None:
        recorded = self.side(group, "cpu_us_per_req")
        if recorded is not None:
            return recorded
        cpu_s = self.side(group, "cpu_s")
        return cpu_s * 1e6 / self.requests if cpu_s is not None and self.requests else None


@dataclass(frozen=True)
class ServerFacts:
    """A server's registry facets and where they came from."""

    name: str
    facets: dict[str, Any] | None     # FACET_KEYS (+ "name"); None: facets unknown
    source: str                       # "env.json" | "registry" | "env.json + registry" | "unknown"
    from_registry: tuple[str, ...] = ()   # facet keys filled from rankbench.servers.SERVERS
    notes: str = ""                       # the registry's one line on what the server is

    @property
    def known(self) -> bool:
        return self.facets is not None

    @property
    def role(self) -> str | None:
        return self.facets.get("role") if self.facets else None

    def get(self, key: str) -> Any:
        return self.facets.get(key) if self.facets else None


@dataclass
class Results:
    path: Path
    env: dict[str, Any] | None
    runs: list[Run]
    notes: list[str] = field(default_factory=list)  # load-time remarks for the report
    servers: dict[str, ServerFacts] = field(default_factory=dict)
    verify: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def calibration(self) -> dict[str, Any] | None:
        value = (self.env or {}).get("calibration")
        return value if isinstance(value, dict) else None

    def body_bytes(self) -> dict[str, float]:
        """Mean response body size per server over verify's fixed requests (verify.json)."""
        out = {}
        for entry in (self.verify or {}).get("servers") or []:
            if isinstance(entry, dict) and isinstance(entry.get("server"), str):
                value = entry.get("mean_body_bytes")
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[entry["server"]] = float(value)
        return out


OPEN_LOOP = "open-loop"  # client.mode of an open-loop run (bench/openloop.py)


def closed_loop(results: Results) -> Results:
    """The results without their open-loop runs (make bench-slo's fixed-rate runs), which
    analysis.slo_report reports; a note says how many were left out."""
    kept = [r for r in results.runs if (r.record.get("client") or {}).get("mode") != OPEN_LOOP]
    left = len(results.runs) - len(kept)
    if not left:
        return results
    note = (f"{left} open-loop run(s) at fixed arrival rates are not in this report: slo.md in "
            f"this folder reports them (python -m analysis.slo_report {results.path})")
    return replace(results, runs=kept, notes=[*results.notes, note])


def load_results(folder: str | Path) -> Results:
    """Load and validate a results folder; raise ResultsError with a one-line message otherwise."""
    given = Path(folder)
    if not given.exists():
        raise ResultsError(f"results folder {str(given)!r} does not exist")
    if not given.is_dir():
        raise ResultsError(f"{str(given)!r} is not a folder")
    path = given.resolve()  # results/latest is a symlink: report the real run folder
    runs_path = path / RUNS_FILE
    if not runs_path.is_file():
        raise ResultsError(f"{given}: no {RUNS_FILE} (is this a results folder of `make bench`?)")

    notes: list[str] = []
    env = _json_object(path / ENV_FILE)
    if env is None:
        notes.append(f"no {ENV_FILE} in the results folder: the environment was not recorded")
    verify = _json_object(path / VERIFY_FILE)

    runs: list[Run] = []
    seen: dict[tuple, str] = {}
    try:
        lines = runs_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{runs_path}: not UTF-8 text ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{runs_path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        run = parse_record(record, source)
        if run.key in seen:
            raise ResultsError(f"{source}: duplicate run {run.label}, first seen at {seen[run.key]}")
        seen[run.key] = source
        runs.append(run)
    if not runs:
        raise ResultsError(f"{runs_path}: no runs recorded")
    names = sorted({r.server for r in runs if not r.is_reference})
    return Results(path=path, env=env, runs=runs, notes=notes,
                   servers={name: server_facts(name, env) for name in names}, verify=verify)


def _json_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    return value


def server_facts(name: str, env: dict[str, Any] | None) -> ServerFacts:
    """A server's facets from env.json; those env.json lacks (schema 1 recorded only language and
    backend) from the registry when the name is registered; else the facets are unknown."""
    listed = (env or {}).get("servers")
    recorded = listed.get(name) if isinstance(listed, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    spec = registry.SERVERS.get(name)
    described = spec.describe() if spec is not None else {}
    facets: dict[str, Any] = {"name": name}
    filled = []
    for key in FACET_KEYS:
        if key in recorded:
            facets[key] = recorded[key]
        elif key in described:
            facets[key] = described[key]
            filled.append(key)
    if any(key not in facets for key in (*registry.FACETS, "role")):
        return ServerFacts(name, None, "unknown")
    source = ("registry" if len(filled) == len(FACET_KEYS) else
              "env.json + registry" if filled else "env.json")
    notes = recorded.get("notes", described.get("notes"))
    return ServerFacts(name, facets, source, tuple(filled),
                       notes if isinstance(notes, str) else "")


def parse_record(record: Any, source: str) -> Run:
    """Validate one runs.jsonl record (schema 1 or 2) and return it as a Run."""
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(record).__name__}")
    if "schema" not in record:
        raise ResultsError(f"{source}: record has no 'schema' key; cannot tell how to read it")
    schema = record["schema"]
    if isinstance(schema, bool) or schema not in SUPPORTED_SCHEMAS:
        known = ", ".join(str(s) for s in SUPPORTED_SCHEMAS)
        raise ResultsError(f"{source}: schema {schema!r} is not supported (this analysis reads "
                           f"schema {known}); refusing to guess what its keys mean")

    r = _Reader(record, source)
    client = r.mapping("client")
    c = _Reader(client, source, "client.")
    requests = c.number("requests")
    rps = c.number("rps")
    non2xx = c.number("non2xx", required=False) or 0
    errors = c.numbers("errors", ERROR_KINDS)
    client_duration = c.number("duration_s", required=False) or None
    ok = c.number("ok", required=False)
    if ok is None:  # schema 1: every response that was not a non-2xx one
        ok = max(0.0, requests - non2xx)
    goodput = c.number("goodput_rps", required=False)
    if goodput is None:
        goodput = ok / client_duration if client_duration else (rps * ok / requests if requests
                                                                else 0.0)
    bytes_per_response = c.number("bytes_per_response", required=False)
    if bytes_per_response is None:
        total_bytes = c.number("bytes", required=False)
        bytes_per_response = total_bytes / requests if total_bytes is not None and requests else None
    valid, reasons = _validity(r, requests, non2xx, errors)
    order = record.get("order")
    if order is not None and (not isinstance(order, list)
                              or not all(isinstance(s, str) for s in order)):
        raise ResultsError(f"{source}: 'order' must be a list of server names")
    fairness = record.get("fairness") if isinstance(record.get("fairness"), dict) else {}
    threads = fairness.get("runtime_threads")
    run = dict(
        source=source,
        record=record,
        schema=schema,
        server=r.text("server"),
        backend=r.text("backend", required=False) or "",
        scenario=r.text("scenario"),
        candidates=r.integer("candidates", minimum=1),
        concurrency=r.integer("concurrency", minimum=1),
        repeat=r.integer("repeat", minimum=0),
        duration_s=r.number("duration_s", positive=True),
        tool=c.text("tool"),
        requests=requests, rps=rps, ok=ok, goodput_rps=goodput, valid=valid,
        invalid_reasons=reasons,
        workers=r.integer("workers", minimum=1, required=False),
        pool_size=r.integer("pool_size", minimum=1, required=False),
        top_k=r.integer("top_k", minimum=1, required=False),
        warmup_s=r.number("warmup_s", required=False),
        started_at=r.text("started_at", required=False),
        non2xx=non2xx,
        client_duration_s=client_duration,
        client_threads=c.integer("threads", minimum=1, required=False),
        position=r.integer("position", minimum=0, required=False),
        order=tuple(order) if order is not None else None,
        bytes_per_response=bytes_per_response,
        runtime_threads=threads if isinstance(threads, dict) else None,
        errors=errors,
        latency_us=c.numbers("latency_us", LATENCY_KEYS),
    )

    stages: dict[str, dict[str, float]] = {}
    histograms: dict[str, Histogram] = {}
    for name, stats in (r.mapping("stages", required=False) or {}).items():
        where = f"stages.{name}."
        if not isinstance(stats, dict):
            raise ResultsError(f"{source}: '{where[:-1]}' must be an object")
        s = _Reader(stats, source, where)
        stages[name] = s.numbers(None, STAGE_KEYS)
        if stats.get("histogram") is not None:
            histograms[f"stage:{name}"] = _decode_histogram(stats["histogram"], source,
                                                            where + "histogram")
    if client.get("histogram") is not None:
        histograms["client"] = _decode_histogram(client["histogram"], source, "client.histogram")

    resources: dict[str, dict[str, float] | None] = {}
    for side, figures in (r.mapping("resources", required=False) or {}).items():
        if figures is None:
            resources[side] = None
            continue
        if not isinstance(figures, dict):
            raise ResultsError(f"{source}: 'resources.{side}' must be an object or null")
        side_reader = _Reader(figures, source, f"resources.{side}.")
        resources[side] = side_reader.numbers(None, RESOURCE_KEYS)

    warnings = record.get("warnings") or []
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise ResultsError(f"{source}: 'warnings' must be a list of strings")

    return Run(**run, stages=stages, resources=resources, warnings=tuple(warnings),
               histograms=histograms)


def _validity(r: "_Reader", requests: float, non2xx: float,
              errors: dict[str, float]) -> tuple[bool, tuple[str, ...]]:
    """The record's verdict (schema 2) and, in any schema, the contract's rule: a run with any
    non-2xx response or socket error measured other work than the contract's and is invalid."""
    reasons: list[str] = []
    if "valid" in r.obj:
        if not isinstance(r.obj["valid"], bool):
            raise r._fail("valid", f"must be true or false, got {r.obj['valid']!r}")
        stated = r.obj.get("invalid_reasons") or []
        if not isinstance(stated, list) or not all(isinstance(s, str) for s in stated):
            raise r._fail("invalid_reasons", "must be a list of strings")
        if not r.obj["valid"]:
            reasons += stated or ["the harness marked the run invalid"]
        if reasons:
            return False, tuple(reasons)
    if non2xx:
        reasons.append(f"{non2xx:.0f} non-2xx response(s)")
    socket = {kind: errors[kind] for kind in SOCKET_ERRORS if errors.get(kind)}
    if socket:
        reasons.append("socket errors " + ", ".join(f"{k} {v:.0f}" for k, v in socket.items()))
    if not requests:
        reasons.append("no request completed")
    return not reasons, tuple(reasons)


def _decode_histogram(value: Any, source: str, key: str) -> Histogram:
    """[[value_us, count], ...] (what the harness writes) or an HdrHistogram V2 base64 string."""
    try:
        return parse_histogram(value)
    except HistogramError as exc:
        raise ResultsError(f"{source}: '{key}' is not a latency histogram: {exc}") from None


class _Reader:
    """Typed access to one JSON object with messages that name the file, line and full key."""

    def __init__(self, obj: dict[str, Any], source: str, prefix: str = ""):
        self.obj, self.source, self.prefix = obj, source, prefix

    def _fail(self, key: str, what: str) -> ResultsError:
        return ResultsError(f"{self.source}: '{self.prefix}{key}' {what}")

    def _value(self, key: str, required: bool) -> Any:
        if key not in self.obj or self.obj[key] is None:
            if required:
                raise self._fail(key, "is missing")
            return None
        return self.obj[key]

    def text(self, key: str, required: bool = True) -> str | None:
        value = self._value(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self._fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def integer(self, key: str, *, minimum: int, required: bool = True) -> int | None:
        value = self._value(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, *, positive: bool = False, required: bool = True) -> float | None:
        value = self._value(key, required)
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0 or (positive and value == 0)):
            bound = "> 0" if positive else ">= 0"
            raise self._fail(key, f"must be a finite number {bound}, got {value!r}")
        return float(value)

    def mapping(self, key: str, required: bool = True) -> dict[str, Any] | None:
        value = self._value(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, f"must be an object, got {type(value).__name__}")
        return value

    def numbers(self, key: str | None, known: tuple[str, ...]) -> dict[str, float]:
        """The numeric entries of an object (key None: this object itself). Keys this analysis
        reads (`known`) must be finite numbers >= 0; other keys (the schema allows additions) are
        kept when they are such numbers and ignored otherwise."""
        obj = self.obj if key is None else (self.mapping(key, required=False) or {})
        reader = self if key is None else _Reader(obj, self.source, f"{self.prefix}{key}.")
        out: dict[str, float] = {}
        for name, value in obj.items():
            if value is None:
                continue
            if name in known:
                out[name] = reader.number(name)
            elif (not isinstance(value, bool) and isinstance(value, (int, float))
                  and math.isfinite(value) and value >= 0):
                out[name] = float(value)
        return out


__all__ = ["CEILING", "PGBENCH", "HANDLER_TOTAL", "MEASURED_STAGES", "RESOURCE_SIDES", "Config",
           "Run", "Results", "ResultsError", "ServerFacts", "load_results", "parse_record",
           "server_facts"]
