"""Read a results folder (`env.json` + `runs.jsonl`, contract "Results") into validated records.

Every problem a user can cause (missing folder, unknown schema, a malformed line, a missing key, a
histogram that does not decode) becomes one `ResultsError` whose message names the file, the line and
the key, so the CLI can print it as a single line. Records are keyed by
(server, scenario, candidates, concurrency, repeat) and never found by position.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis import SUPPORTED_SCHEMAS
from rankbench.histogram import Histogram, HistogramError, parse as parse_histogram

RUNS_FILE = "runs.jsonl"
ENV_FILE = "env.json"

# Stage names of the contract, in request order; "total" is the whole handler.
STAGES = ("parse", "db", "pre", "infer", "post")
HANDLER_TOTAL = "total"
RESOURCE_SIDES = ("server", "db", "load")

# Numeric keys this analysis reads; they must be numbers when present.
LATENCY_KEYS = ("mean", "stdev", "max", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99")
STAGE_KEYS = ("count", "sum_us", "mean_us", "p50_us", "p90_us", "p99_us", "max_us")
RESOURCE_KEYS = ("cpu_s", "cpu_us_per_req", "rss_peak_mb")
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


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
    server: str
    backend: str
    scenario: str
    candidates: int
    concurrency: int
    repeat: int
    duration_s: float
    tool: str
    requests: float
    rps: float
    workers: int | None = None
    pool_size: int | None = None
    top_k: int | None = None
    warmup_s: float | None = None
    started_at: str | None = None
    non2xx: float = 0
    client_duration_s: float | None = None  # measured by the load generator, when recorded
    client_threads: int | None = None       # load generator threads, when recorded
    errors: dict[str, float] = field(default_factory=dict)
    latency_us: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    resources: dict[str, dict[str, float] | None] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # Latency histograms in microseconds: "client" and "stage:<name>" (see analysis.histograms).
    histograms: dict[str, Histogram] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.server, self.scenario, self.candidates, self.concurrency, self.repeat)

    @property
    def config(self) -> Config:
        return Config(self.scenario, self.candidates, self.concurrency)

    @property
    def is_ceiling(self) -> bool:
        """The database ceiling: pgbench running the same queries, no HTTP server in between."""
        return self.tool == "pgbench"

    @property
    def label(self) -> str:
        return f"{self.server} ({self.config.label}, repeat {self.repeat})"


@dataclass
class Results:
    path: Path
    env: dict[str, Any] | None
    runs: list[Run]
    notes: list[str] = field(default_factory=list)  # load-time warnings for the report

    @property
    def name(self) -> str:
        return self.path.name


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
    env_path = path / ENV_FILE
    env: dict[str, Any] | None = None
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{env_path}: not valid JSON ({exc})") from None
        if not isinstance(env, dict):
            raise ResultsError(f"{env_path}: expected a JSON object")
    else:
        notes.append(f"no {ENV_FILE} in the results folder: the environment was not recorded")

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
    return Results(path=path, env=env, runs=runs, notes=notes)


def parse_record(record: Any, source: str) -> Run:
    """Validate one runs.jsonl record (contract schema 1) and return it as a Run."""
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
    run = dict(
        source=source,
        record=record,
        server=r.text("server"),
        backend=r.text("backend"),
        scenario=r.text("scenario"),
        candidates=r.integer("candidates", minimum=1),
        concurrency=r.integer("concurrency", minimum=1),
        repeat=r.integer("repeat", minimum=0),
        duration_s=r.number("duration_s", positive=True),
        tool=c.text("tool"),
        requests=c.number("requests"),
        rps=c.number("rps"),
        workers=r.integer("workers", minimum=1, required=False),
        pool_size=r.integer("pool_size", minimum=1, required=False),
        top_k=r.integer("top_k", minimum=1, required=False),
        warmup_s=r.number("warmup_s", required=False),
        started_at=r.text("started_at", required=False),
        non2xx=c.number("non2xx", required=False) or 0,
        client_duration_s=c.number("duration_s", required=False),
        client_threads=c.integer("threads", minimum=1, required=False),
        errors=c.numbers("errors", ERROR_KINDS),
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
        if "histogram" in stats:
            histograms[f"stage:{name}"] = _decode_histogram(stats["histogram"], source,
                                                            where + "histogram")
    if "histogram" in client:
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
