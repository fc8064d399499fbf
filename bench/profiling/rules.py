"""Where a sampled stack's CPU time goes: the named categories and the one table of rules for every
server, Python and Rust alike.

A rule names a category and matches one frame: by kind (kernel, native, python), by shared object
(or, for a Python frame, its source file) and by symbol (or Python function), as regular
expressions. A stack is read from the leaf towards the root, and the first frame that a rule
decides gives the sample its category:

- a kernel frame is always `kernel` (networking, syscalls, scheduling, page faults);
- some frames are *transparent*: libc's string and syscall wrappers, the vDSO, Rust's `core`/`std`,
  and most of libpython's C code (object protocol, dict and list operations). They do work on behalf
  of their caller, so the walk goes on to the caller: `memcpy` under asyncpg's decoder is the
  driver's, under numpy it is tensor building;
- a native frame that no rule knows is passed over, but remembered: if a native frame further up
  decides, it decides for both (a helper library of ONNX Runtime is ONNX Runtime's); if nothing
  does, or Python code called it, the sample is `other`, shown with that frame so that the table
  can grow (and so that py-spy, which sees such frames as native code, and perf agree on which
  samples ran Python code);
- once the walk reaches CPython's evaluation loop, the CPU was spent running Python code, and only
  Python frames decide from there on (else every callback would belong to the event loop that calls
  it): the first Python frame with a rule gives the category, and the server's own glue code
  (`py_servers/`, `framework_servers/` where no finer rule applies) is `interpreter`. Without Python
  frames in the stack (perf on CPython < 3.12) the sample is `PENDING`: the attribution splits
  those samples over categories in the proportions that py-spy saw (attribute.py).

Order matters: the first matching rule wins, so specific rules (asyncpg's pool module) come before
general ones (the rest of asyncpg).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from bench.profiling.stacks import Frame

# -- categories, in the order the report stacks them ----------------------------------------------
KERNEL = "kernel"
INTERPRETER = "interpreter"
EVENT_LOOP = "event_loop"
HTTP = "http"
JSON = "json"
VALIDATION = "validation"
DB_DRIVER = "db_driver"
POOL = "pool"
TENSOR = "tensor"
MODEL = "model"
ALLOCATOR = "allocator"
TIMERS = "timers_stats"
OTHER = "other"

CATEGORIES: dict[str, str] = {
    KERNEL: "kernel: networking and syscalls",
    INTERPRETER: "interpreter",
    EVENT_LOOP: "event loop / async runtime",
    HTTP: "HTTP parsing and writing",
    JSON: "JSON",
    VALIDATION: "request validation",
    DB_DRIVER: "database driver (protocol and decoding)",
    POOL: "connection pool",
    TENSOR: "tensor building (numpy and the like)",
    MODEL: "model runtime",
    ALLOCATOR: "allocator",
    TIMERS: "timers and stats",
    OTHER: "other",
}
NAMED = tuple(c for c in CATEGORIES if c != OTHER)

# Verdicts that are not categories.
TRANSPARENT = "(transparent)"    # the caller decides
PYTHON_CODE = "(python code)"    # CPython's eval loop: Python frames decide from here on
PENDING = "(pending)"            # Python code with no Python frame to name it (perf on < 3.12)

LIBPYTHON = r"(^|/)(libpython3[\d.]*\.so|python3(\.\d+)?$)"
_LIBPYTHON_RE = re.compile(LIBPYTHON)
STDLIB_C = r"(^|/)lib-dynload/"
_RUST_CRATES = r"^<?(?:{})::"


def _crates(*names: str) -> str:
    return _RUST_CRATES.format("|".join(names))


@dataclass(frozen=True)
class Rule:
    category: str
    kind: str                      # "kernel" | "native" | "python"
    dso: str | None = None         # regex searched in the shared object / Python source file
    symbol: str | None = None      # regex searched in the symbol / Python function
    why: str = ""
    _dso: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)
    _symbol: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dso", re.compile(self.dso) if self.dso else None)
        object.__setattr__(self, "_symbol", re.compile(self.symbol) if self.symbol else None)

    def matches(self, frame: Frame) -> bool:
        if frame.kind != self.kind:
            return False
        if self._dso is not None and not self._dso.search(frame.dso):
            return False
        if self._symbol is not None:
            return any(self._symbol.search(view) for view in _symbol_views(frame.symbol))
        return True


def _symbol_views(symbol: str) -> tuple[str, ...]:
    """A Rust `<Type as Trait>::method` is matched on the type, then on the trait (`<F as
    actix_service::Service>::call` belongs to actix when F is an anonymous closure)."""
    if symbol.startswith("<") and " as " in symbol:
        return symbol, symbol.split(" as ", 1)[1]
    return (symbol,)


RULES: tuple[Rule, ...] = (
    # -- the kernel ---------------------------------------------------------------------------
    Rule(KERNEL, "kernel", why="every kernel frame: TCP/loopback, syscalls, scheduler, faults"),

    # -- allocators (before the transparent C libraries they live in) --------------------------
    Rule(ALLOCATOR, "native", symbol=r"^(malloc|free|calloc|realloc|cfree|posix_memalign|"
         r"aligned_alloc|memalign|_int_malloc|_int_free\w*|_int_realloc|_int_memalign|"
         r"malloc_consolidate|unlink_chunk\w*|tcache_\w+|sysmalloc|systrim|alloc_perturb|"
         r"(__GI_)?__libc_(malloc|free|calloc|realloc|memalign)|"
         r"mi_\w+|_mi_\w+|je_\w+|tc_\w+)$", why="glibc malloc and friends, mimalloc, jemalloc"),
    Rule(ALLOCATOR, "native", symbol=r"^(__rust_(alloc|dealloc|realloc|alloc_zeroed)|__rdl_\w+|"
         r"__rg_\w+)$|^alloc::(alloc|raw_vec)::|^<alloc::alloc::Global as |^operator (new|delete)",
         why="Rust's global allocator shims and Vec growth; C++ new/delete"),
    Rule(ALLOCATOR, "native", dso=LIBPYTHON, symbol=r"^(_?PyObject_(Malloc|Calloc|Realloc|Free)|"
         r"_?PyMem_\w+|pymalloc_\w+|_PyObject_\w*Malloc\w*|allocate_from_new_pool|"
         r"insert_to_(used|free)pool|new_arena|_PyObject_ArenaMmap|_PyObject_ArenaMunmap)$",
         why="CPython's small-object allocator (pymalloc)"),

    # -- timers and stats -------------------------------------------------------------------------
    Rule(TIMERS, "native", dso=LIBPYTHON, symbol=r"^(time_perf_counter\w*|time_monotonic\w*|"
         r"time_time\w*|_PyTime_\w+|py_get_monotonic_clock|py_get_system_clock|pygettimeofday)$",
         why="time.perf_counter_ns() and friends: the stage timers"),
    Rule(TIMERS, "python", dso=r"(^|/)py_servers/stats\.py$", why="stage histograms (shared memory)"),
    Rule(TIMERS, "native", dso=STDLIB_C + r"math\.", why="math.log: the histograms' bucket index"),
    Rule(TIMERS, "python", dso=r"(^|/)framework_servers/common\.py$",
         symbol=r"^(RankStats|Marks|mark|stages_of)\b"),
    Rule(TIMERS, "native", symbol=_crates("hdrhistogram", r"candle_server::server::stats"),
         why="the Rust server's stage histograms"),

    # -- JSON ---------------------------------------------------------------------------------------
    Rule(JSON, "native", dso=r"(^|/)orjson[./]", why="orjson"),
    Rule(JSON, "native", dso=STDLIB_C + r"_json\.", why="the json module's C accelerator"),
    Rule(JSON, "python", dso=r"(^|/)(json|orjson)/|(^|/)fastapi/encoders\.py$"),
    Rule(JSON, "python", dso=r"(^|/)py_servers/app\.py$", symbol=r"^(top_k_body|error_body)\b",
         why="building the response body (top-k list, then orjson.dumps)"),
    Rule(JSON, "python", dso=r"(^|/)framework_servers/common\.py$",
         symbol=r"^(json_response|error_response)\b"),
    Rule(JSON, "native", symbol=_crates("serde_json", "serde", "ryu", "itoa"),
         why="serde_json, number formatting"),
    Rule(JSON, "native", symbol=r"^<?candle_server::server::(app::json_response\w*|error::)",
         why="the Rust server's JSON bodies"),

    # -- request validation ---------------------------------------------------------------------
    Rule(VALIDATION, "python", dso=r"(^|/)py_servers/app\.py$", symbol=r"^(parse_rank|_is_int)\b"),
    Rule(VALIDATION, "python", dso=r"(^|/)framework_servers/common\.py$",
         symbol=r"^validation_message\b"),
    Rule(VALIDATION, "native", dso=r"(^|/)pydantic_core/", why="pydantic's Rust core"),
    Rule(VALIDATION, "python", dso=r"(^|/)(pydantic|pydantic_core|annotated_types)/|"
         r"(^|/)fastapi/dependencies/", why="pydantic models, FastAPI's dependency solving"),
    Rule(VALIDATION, "native", symbol=r"^<?candle_server::server::request::",
         why="RankRequest's serde visitors and checks"),

    # -- HTTP -----------------------------------------------------------------------------------------
    Rule(HTTP, "native", dso=r"(^|/)httptools/", why="llhttp via httptools"),
    Rule(HTTP, "native", dso=STDLIB_C + r"zlib\.|(^|/)libz\.so",
         why="GZipMiddleware's compression (the only zlib user on these request paths)"),
    Rule(HTTP, "python", dso=r"(^|/)(py_servers/http\.py|framework_servers/protocol\.py|httptools/|"
         r"uvicorn/|starlette/|fastapi/|h11/|gzip\.py$|email/|http/|urllib/|logging/)",
         why="the HTTP stacks; uvicorn's access log is the only logging on the request path"),
    Rule(HTTP, "python", dso=r"(^|/)framework_servers/common\.py$", symbol=r"^ApiKeyGate\b"),
    Rule(HTTP, "native", symbol=_crates("actix_http", "actix_web", "actix_router", "actix_service",
                                        "actix_codec", "actix_utils", "http", "httparse",
                                        "httpdate", "mime", "bytestring", "language_tags",
                                        r"candle_server::server::transport",
                                        r"candle_server::server::app::read_body")),

    # -- connection pool (before the driver: asyncpg's pool is a module of asyncpg) -----------------
    Rule(POOL, "python", dso=r"(^|/)(asyncpg/pool\.py|sqlalchemy/pool/|psycopg_pool/)"),
    Rule(POOL, "native", symbol=_crates("deadpool", "deadpool_postgres", "deadpool_runtime")),

    # -- database driver ----------------------------------------------------------------------
    Rule(DB_DRIVER, "native", dso=r"(^|/)(asyncpg|psycopg_binary|psycopg_c|psycopg2|sqlalchemy)/|"
         r"(^|/)libpq[.-]|psycopg_binary\.libs/",
         why="asyncpg's Cython protocol and codecs; psycopg and libpq; SQLAlchemy's C helpers"),
    Rule(DB_DRIVER, "python", dso=r"(^|/)(asyncpg|psycopg|psycopg2|sqlalchemy)/",
         why="the drivers, and SQLAlchemy's ORM on top of psycopg"),
    Rule(DB_DRIVER, "python", dso=r"(^|/)py_servers/db\.py$", why="the server's two queries"),
    Rule(DB_DRIVER, "native", symbol=_crates("tokio_postgres", "postgres_protocol",
                                             "postgres_types", "fallible_iterator",
                                             r"candle_server::server::db")),

    # -- event loop / async runtime -----------------------------------------------------------------
    Rule(EVENT_LOOP, "native", dso=r"(^|/)(uvloop/|libuv)", why="uvloop (libuv)"),
    Rule(EVENT_LOOP, "native", dso=STDLIB_C + r"(_asyncio|select|_socket|_heapq|_queue|_contextvars)\.",
         why="asyncio's C parts, epoll and sockets, timer heap, the thread pool's queue"),
    Rule(TRANSPARENT, "python", dso=r"(^|/)asyncio/(queues|locks)\.py$",
         why="asyncio.Queue and Lock belong to their user: asyncpg's pool keeps its free "
             "connections in a LifoQueue"),
    Rule(EVENT_LOOP, "python", dso=r"(^|/)(asyncio|uvloop|anyio|sniffio|concurrent)/|"
         r"(^|/)(selectors|contextvars|threading|queue|socket)\.py$",
         why="the event loops, and the thread pool that runs FastAPI's sync handlers"),
    Rule(EVENT_LOOP, "native", dso=LIBPYTHON, symbol=r"^(context_run|_?PyContext_\w+)$",
         why="contextvars.Context.run around every asyncio callback"),
    Rule(EVENT_LOOP, "native", symbol=_crates("tokio", "tokio_util", "mio", r"futures_\w+",
                                              "actix_rt", "actix_server", "parking_lot",
                                              r"parking_lot_core", "slab", "local_waker",
                                              "async_task", r"crossbeam_\w+", "socket2")),

    # -- tensor building ------------------------------------------------------------------------
    Rule(TENSOR, "native", dso=r"(^|/)(numpy/|numpy\.libs/|libopenblas|libscipy_openblas)",
         why="numpy (array building, lexsort for top-k)"),
    Rule(TENSOR, "python", dso=r"(^|/)numpy/"),
    Rule(TENSOR, "python", dso=r"(^|/)py_servers/app\.py$", symbol=r"^features_to_input\b"),
    Rule(TENSOR, "native", symbol=r"^<?candle_server::(server::app::(features_to_input|"
         r"keep_top_k|build_input)|input::|features::)"),

    # -- model runtime ----------------------------------------------------------------------------------
    Rule(MODEL, "native", dso=r"onnxruntime|(^|/)torch/|libtorch|libc10|libgomp|libiomp|libmkl|"
         r"torch\.libs/|rankbench_candle|libsleef|libshm", why="ONNX Runtime, PyTorch, py-candle"),
    Rule(MODEL, "python", dso=r"(^|/)(onnxruntime|torch|rankbench_candle)/|"
         r"(^|/)(py_servers/backends/|framework_servers/seed_runtime\.py)"),
    Rule(MODEL, "native", symbol=_crates("candle_core", "candle_nn", r"gemm\w*", "pulp", "half",
                                         "safetensors", "rayon", r"rayon_core", "dyn_stack",
                                         r"candle_server::model", r"candle_server::server::app::Scorer",
                                         "rankbench_candle", "pyo3")),

    # -- the interpreter ------------------------------------------------------------------------
    Rule(INTERPRETER, "native", dso=LIBPYTHON, symbol=r"^(gc_collect\w*|collect|subtract_refs|"
         r"update_refs|move_unreachable|move_legacy_finalizers|visit_\w+|deduce_unreachable|"
         r"_PyGC_\w+|PyGC_\w+|gc_\w+|\w+_traverse)$", why="the cyclic garbage collector"),
    Rule(INTERPRETER, "native", dso=LIBPYTHON, symbol=r"^(take_gil|drop_gil|_PyEval_(Acquire|"
         r"Release)\w*|PyEval_(RestoreThread|SaveThread|AcquireThread|ReleaseThread)|"
         r"PyThread_\w+|PyCOND_\w+|PyMUTEX_\w+|_PyThread_\w+)$",
         why="the GIL: handing it over between threads"),
    Rule(INTERPRETER, "native", dso=STDLIB_C, why="the standard library's other C modules"),
    Rule(PYTHON_CODE, "native", dso=LIBPYTHON, symbol=r"^(_PyEval_EvalFrameDefault|"
         r"_PyEval_EvalFrame|_PyEval_Vector|PyEval_EvalCode\w*|_PyEval_EvalCode\w*)$"),
    Rule(INTERPRETER, "python", dso=r"(^|/)(py_servers|framework_servers)/",
         why="the server's own glue between library calls, run by the interpreter"),

    # -- transparent: the caller decides ------------------------------------------------------------
    Rule(TRANSPARENT, "native", dso=LIBPYTHON, why="object protocol, dict/list ops, calls"),
    Rule(TRANSPARENT, "native", dso=r"(^|/)(libc[.-]|libm[.-]|libpthread|ld-linux|libdl|librt|"
         r"libgcc_s|libstdc\+\+)|^\[vdso\]$|^\[unknown\]$|^$"),
    Rule(TRANSPARENT, "native", dso=r"\.h$", why="py-spy: CPython's inline helpers (object.h)"),
    Rule(TRANSPARENT, "native", symbol=r"^<?(core|std|alloc)::|^__rust_|^rust_|^_start$|^main$"),
)


@dataclass(frozen=True)
class Verdict:
    category: str                 # a category, or PENDING
    frame: Frame | None           # the frame that decided (None: nothing did)
    python: bool                  # decided while reading Python code (a Python frame, or PENDING)


def rule_for(frame: Frame, rules: Sequence[Rule] = RULES) -> Rule | None:
    for rule in rules:
        if rule.matches(frame):
            return rule
    return None


def classify(frames: Sequence[Frame], rules: Sequence[Rule] = RULES) -> Verdict:
    """The category of one stack (frames leaf first). See the module docstring."""
    in_python = False
    unknown: Frame | None = None
    saw_libpython = False
    for frame in frames:
        if in_python and frame.kind != "python":
            continue       # native callers of Python code (the loop calling a callback) don't decide
        rule = rule_for(frame, rules)
        category = rule.category if rule else None
        if frame.kind == "python":
            if unknown is not None:
                return Verdict(OTHER, unknown, False)
            in_python = True
            if category is not None and category not in (TRANSPARENT, PYTHON_CODE):
                return Verdict(category, frame, True)
            continue       # a Python frame no rule knows (a stdlib helper): its callers decide
        if category == PYTHON_CODE:
            if unknown is not None:
                # Native code no rule knows, called from Python: py-spy sees it as native code too,
                # so it must not join the Python samples that py-spy's proportions split.
                return Verdict(OTHER, unknown, False)
            in_python = True
            continue
        if category == TRANSPARENT:
            saw_libpython = saw_libpython or bool(_LIBPYTHON_RE.search(frame.dso))
            continue
        if category is None:
            unknown = unknown or frame
            continue
        return Verdict(category, frame, False)
    if in_python:
        first_python = next((f for f in frames if f.kind == "python"), None)
        if first_python is not None:   # Python code no rule names: the interpreter running it
            return Verdict(INTERPRETER, first_python, True)
        return Verdict(PENDING, None, True)
    if unknown is not None:
        return Verdict(OTHER, unknown, False)
    if saw_libpython:
        return Verdict(INTERPRETER, None, False)
    return Verdict(OTHER, frames[0] if frames else None, False)


def python_leaf(frames: Sequence[Frame], rules: Sequence[Rule] = RULES) -> Verdict | None:
    """For a py-spy stack: its verdict when the thread was running Python code (every frame below
    the first Python frame is transparent), else None (native code, which perf already names)."""
    for index, frame in enumerate(frames):
        if frame.kind == "python":
            return classify(frames[index:], rules)
        rule = rule_for(frame, rules)
        if rule is None or rule.category != TRANSPARENT:
            return None
    return None


KERNEL_ENTRY = re.compile(r"^__(?:x64|ia32|se)_sys_(\w+)$|^__do_sys_(\w+)$|^ksys_(\w+)$")


def kernel_detail(frames: Sequence[Frame]) -> str:
    """What a kernel sample was doing: the syscall's name, or how the kernel was entered."""
    kernel = [f for f in frames if f.kind == "kernel"]
    for frame in kernel:
        match = KERNEL_ENTRY.match(frame.symbol)
        if match:
            return "sys_" + next(g for g in match.groups() if g)
    names = " ".join(f.symbol for f in kernel)
    if "page_fault" in names:
        return "page fault"
    if "net_rx_action" in names or "do_softirq" in names:
        return "softirq (network receive)"
    if "schedule" in names:
        return "scheduler"
    if "irq" in names or "sysvec" in names:
        return "interrupt"
    return kernel[-1].symbol if kernel else "kernel"
