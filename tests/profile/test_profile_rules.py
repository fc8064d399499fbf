"""The attribution rules on hand-made stacks: each category from a realistic frame, the walk's rules
(transparent callees, Python code decided by Python frames only), unknown frames -> other."""
from __future__ import annotations

import pytest

from bench.profiling import rules
from bench.profiling.stacks import Frame

LIBPY = "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"
SITE = "/work/main/.venv/lib/python3.11/site-packages"
DYNLOAD = "/root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
RUST = "/work/main/candle_server/target/release/candle_server"


def k(symbol):
    return Frame("kernel", symbol, "[kernel.kallsyms]")


def n(symbol, dso):
    return Frame("native", symbol, dso)


def py(function, file):
    return Frame("python", function, file)


EVAL = n("_PyEval_EvalFrameDefault", LIBPY)
UVLOOP_CALLBACK = [n("__pyx_f_6uvloop_4loop_6Handle__run", f"{SITE}/uvloop/loop.cpython-311-x86_64-linux-gnu.so"),
                   n("uv_run", f"{SITE}/uvloop/loop.cpython-311-x86_64-linux-gnu.so")]

# One realistic stack per category (leaf first), from what perf and py-spy print for these servers.
CASES = {
    "kernel": [k("tcp_sendmsg_locked"), k("tcp_sendmsg"), k("__x64_sys_write"),
               k("entry_SYSCALL_64_after_hwframe"), n("__GI___libc_write", LIBC),
               n("uv__write", f"{SITE}/uvloop/loop.cpython-311-x86_64-linux-gnu.so")],
    "allocator": [n("_int_malloc", LIBC), n("malloc", LIBC),
                  n("alloc::raw_vec::finish_grow", RUST)],
    "allocator (pymalloc)": [n("_PyObject_Malloc", LIBPY), n("PyList_New", LIBPY), EVAL],
    "json": [n("[unknown]", f"{SITE}/orjson/orjson.cpython-311-x86_64-linux-gnu.so"), EVAL],
    "json (serde)": [n("serde_json::de::Deserializer<R>::parse_integer", RUST),
                     n("actix_web::handler::handler_service::{{closure}}", RUST)],
    "http": [n("llhttp__internal__run", f"{SITE}/httptools/parser/parser.cpython-311-x86_64-linux-gnu.so"),
             EVAL],
    "http (actix)": [n("actix_http::h1::dispatcher::InnerDispatcher<T,S,B,X,U>::poll_request", RUST),
                     n("tokio::runtime::task::raw::poll", RUST)],
    "db_driver": [n("memcpy", LIBC),
                  n("__pyx_f_7asyncpg_8protocol_8protocol_array_decode",
                    f"{SITE}/asyncpg/protocol/protocol.cpython-311-x86_64-linux-gnu.so"),
                  *UVLOOP_CALLBACK],
    "db_driver (tokio-postgres)": [n("postgres_protocol::message::backend::Message::parse", RUST)],
    "pool": [n("<deadpool::managed::pool::Pool<M,W>>::get::{{closure}}", RUST)],
    "event_loop": [n("uv__io_poll", f"{SITE}/uvloop/loop.cpython-311-x86_64-linux-gnu.so")],
    "event_loop (tokio)": [n("tokio::runtime::scheduler::current_thread::Context::run_task", RUST)],
    "tensor": [n("FLOAT_setitem", f"{SITE}/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so"),
               EVAL],
    "model": [n("MlasSgemmKernelFma3", f"{SITE}/onnxruntime/capi/onnxruntime_pybind11_state.so"),
              EVAL],
    "model (candle)": [n("gemm_f32::microkernel::fma::f32::x2x6", RUST),
                       n("candle_core::tensor::Tensor::matmul", RUST)],
    "model (torch)": [n("mkl_blas_def_sgemm_kernel_0_zen", f"{SITE}/torch/lib/libtorch_cpu.so")],
    "timers_stats": [n("__vdso_clock_gettime", "[vdso]"), n("time_perf_counter_ns", LIBPY), EVAL],
    "timers_stats (hdrhistogram)": [n("hdrhistogram::Histogram<T>::record_n_inner", RUST)],
    "interpreter (gc)": [n("gc_collect_main", LIBPY), n("_PyObject_GC_Link", LIBPY), EVAL],
    "interpreter (GIL)": [n("take_gil", LIBPY), n("PyEval_RestoreThread", LIBPY)],
    "validation": [n("[unknown]", f"{SITE}/pydantic_core/_pydantic_core.cpython-311-x86_64-linux-gnu.so")],
    "validation (Rust)": [n("candle_server::server::request::integer", RUST),
                          n("serde_json::de::from_slice", RUST)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_category_from_a_realistic_stack(case):
    expected = case.split(" ")[0]
    verdict = rules.classify(CASES[case])
    assert verdict.category == expected, verdict


def test_every_named_category_is_reachable():
    reached = {case.split(" ")[0] for case in CASES}
    assert reached == set(rules.NAMED)


def test_unknown_native_frames_are_other_and_named():
    stack = [n("deflate_slow", "/usr/lib/libmystery.so.1"), n("__libc_start_main", LIBC)]
    verdict = rules.classify(stack)
    assert verdict.category == rules.OTHER
    assert verdict.frame.dso == "/usr/lib/libmystery.so.1"


def test_unknown_native_frame_under_a_known_library_belongs_to_it():
    stack = [n("some_helper", "/usr/lib/libhelper.so"),
             n("onnxruntime::InferenceSession::Run", f"{SITE}/onnxruntime/capi/libonnxruntime.so.1")]
    assert rules.classify(stack).category == rules.MODEL


def test_unknown_native_code_called_from_python_is_other_not_pending():
    # py-spy sees such a frame as native code, so perf must not count it among the Python samples.
    stack = [n("mystery", "/usr/lib/libmystery.so"), n("PyObject_Call", LIBPY), EVAL]
    assert rules.classify(stack).category == rules.OTHER


def test_python_code_without_python_frames_is_pending():
    stack = [n("dict_lookup", LIBPY), EVAL, n("PyObject_Call", LIBPY), *UVLOOP_CALLBACK]
    verdict = rules.classify(stack)
    assert verdict.category == rules.PENDING and verdict.python


def test_native_callers_of_python_code_do_not_decide():
    # The event loop calls every callback: once Python frames are seen, only they decide.
    stack = [EVAL, py("HttpProtocol.data_received", "py_servers/http.py"), *UVLOOP_CALLBACK]
    assert rules.classify(stack).category == rules.HTTP


def test_first_python_frame_with_a_rule_decides():
    stack = [py("Pool._acquire", "asyncpg/pool.py"), py("Database.fetch", "py_servers/db.py"),
             py("App._rank_task", "py_servers/app.py")]
    assert rules.classify(stack).category == rules.POOL


def test_python_frames_without_rule_defer_to_their_callers():
    stack = [py("__instancecheck__", "<frozen abc>"), py("isfuture", "asyncio/base_futures.py")]
    assert rules.classify(stack).category == rules.EVENT_LOOP


def test_asyncio_queue_belongs_to_the_pool_that_uses_it():
    stack = [py("Queue.put_nowait", "asyncio/queues.py"),
             py("PoolConnectionHolder.release", "asyncpg/pool.py")]
    assert rules.classify(stack).category == rules.POOL


def test_the_servers_own_glue_is_interpreter():
    stack = [py("App._rank_task", "py_servers/app.py")]
    assert rules.classify(stack).category == rules.INTERPRETER


def test_function_level_rules_in_the_app_module():
    assert rules.classify([py("parse_rank", "py_servers/app.py")]).category == rules.VALIDATION
    assert rules.classify([py("features_to_input.<locals>.<listcomp>",
                              "py_servers/app.py")]).category == rules.TENSOR
    assert rules.classify([py("top_k_body", "py_servers/app.py")]).category == rules.JSON


def test_perf_trampoline_frames_decide_like_pyspy_frames():
    # CPython 3.12 -X perf: `py::function:/path/file.py` frames between the eval loop's frames.
    from bench.profiling.stacks import _perf_frame
    stack = [n("_PyEval_EvalFrameDefault", LIBPY),
             _perf_frame("7f00", "py::Connection._do_execute:/venv/site-packages/asyncpg/connection.py",
                         "/tmp/perf-123.map"),
             n("_PyEval_EvalFrameDefault", LIBPY)]
    assert stack[1].kind == "python"
    assert rules.classify(stack).category == rules.DB_DRIVER


def test_rust_trait_impls_are_matched_on_the_trait_too():
    stack = [n("<F as actix_service::Service<Req>>::call", RUST)]
    assert rules.classify(stack).category == rules.HTTP


def test_rust_std_and_core_are_transparent():
    stack = [n("core::ptr::drop_in_place<tokio_postgres::client::Responses>", RUST),
             n("tokio_postgres::query::query::{{closure}}", RUST)]
    assert rules.classify(stack).category == rules.DB_DRIVER


def test_pyspy_python_leaf():
    native_leaf = [n("write", "libc.so.6"), n("UVStream__try_write", "loop.c"),
                   py("HttpProtocol.respond", "py_servers/http.py")]
    assert rules.python_leaf(native_leaf) is None          # uvloop's C code: perf names it
    python_leaf = [n("clock_gettime", "libc.so.6"), n("Py_DECREF", "object.h"),
                   py("Pool.release", "asyncpg/pool.py")]
    verdict = rules.python_leaf(python_leaf)
    assert verdict is not None and verdict.category == rules.POOL


def test_kernel_detail_names_the_syscall():
    assert rules.kernel_detail(CASES["kernel"]) == "sys_write"
    assert rules.kernel_detail([k("finish_task_switch"), k("__schedule"), k("schedule")]) == "scheduler"
    assert rules.kernel_detail([k("clear_page_erms"), k("exc_page_fault"),
                                k("asm_exc_page_fault")]) == "page fault"
