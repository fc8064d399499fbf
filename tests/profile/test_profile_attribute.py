"""Attribution arithmetic on hand-made samples: shares, the split of perf's unnamed Python samples
by py-spy's proportions, the window, CPU per request, and the records built from them."""
from __future__ import annotations

import pytest

from bench.profiling import records, rules
from bench.profiling.attribute import attribute
from bench.profiling.stacks import Frame, Sample

LIBPY = "/usr/lib/libpython3.11.so.1.0"
EVAL = Frame("native", "_PyEval_EvalFrameDefault", LIBPY)
KERNEL = [Frame("kernel", "tcp_sendmsg", "[kernel.kallsyms]"),
          Frame("kernel", "__x64_sys_write", "[kernel.kallsyms]")]
ORJSON = [Frame("native", "dumps", "site-packages/orjson/orjson.so"), EVAL]
PYTHON = [Frame("native", "dict_lookup", LIBPY), EVAL]          # perf: pending
MYSTERY = [Frame("native", "mystery", "/opt/libmystery.so")]


def sample(frames, t=10.0, period=1_000_000):
    return Sample(pid=1, tid=1, comm="python", time_s=t, period_ns=period, frames=frames)


def spy(*frames):
    return list(frames)


POOL_STACK = spy(Frame("python", "Pool._acquire", "asyncpg/pool.py"))
HTTP_STACK = spy(Frame("python", "HttpProtocol.on_url", "py_servers/http.py"))
NATIVE_STACK = spy(Frame("native", "UVStream__try_write", "loop.c"),
                   Frame("python", "HttpProtocol.respond", "py_servers/http.py"))


def test_shares_and_cpu_per_request():
    samples = [sample(KERNEL)] * 6 + [sample(ORJSON)] * 3 + [sample(MYSTERY)]
    result = attribute(samples)
    record = result.as_record(server_cpu_us_per_req=200.0)
    cats = record["categories"]
    assert cats["kernel"]["share"] == 0.6 and cats["kernel"]["cpu_us_per_req"] == 120.0
    assert cats["json"]["share"] == 0.3 and cats["json"]["cpu_us_per_req"] == 60.0
    assert cats["other"]["share"] == 0.1
    assert record["named_share"] == 0.9
    assert record["sampled_cpu_s"] == 0.01
    assert cats["kernel"]["top"] == [["sys_write", 1.0]]
    assert cats["other"]["top"] == [["mystery [libmystery.so]", 1.0]]


def test_pending_python_samples_are_split_by_pyspy_proportions():
    samples = [sample(PYTHON)] * 8 + [sample(KERNEL)] * 2
    pyspy = [(POOL_STACK, 30), (HTTP_STACK, 10), (NATIVE_STACK, 60)]   # native one is ignored
    result = attribute(samples, pyspy)
    assert result.pending == 8
    assert result.weights["pool"] == pytest.approx(6.0)
    assert result.weights["http"] == pytest.approx(2.0)
    assert result.pyspy == {"samples": 100, "running_python": 40,
                            "categories": {"pool": 30, "http": 10}}
    record = result.as_record(100.0)
    assert record["categories"]["pool"]["estimated_share"] == 1.0
    assert record["categories"]["kernel"]["estimated_share"] == 0.0
    assert record["named_share"] == 1.0


def test_pending_without_pyspy_is_interpreter_with_a_note():
    result = attribute([sample(PYTHON)] * 4)
    assert result.weights["interpreter"] == 4
    assert result.notes and "could not be named" in result.notes[0]


def test_only_samples_inside_the_window_count():
    samples = [sample(KERNEL, t=1.0), sample(ORJSON, t=5.0), sample(ORJSON, t=6.0),
               sample(KERNEL, t=9.5)]
    result = attribute(samples, window=(4.0, 9.0))
    assert result.samples == 2
    assert result.weights == {"json": 2}


def test_layers_say_where_the_leaf_ran():
    samples = [sample(KERNEL), sample(PYTHON), sample(PYTHON), sample(ORJSON)]
    record = attribute(samples, [(POOL_STACK, 1)]).as_record(None)
    assert record["layers"] == {"kernel": 0.25, "libpython": 0.5, "native": 0.25}
    assert record["categories"]["pool"]["cpu_us_per_req"] is None


def test_record_warns_below_the_named_target():
    result = attribute([sample(MYSTERY)] * 2 + [sample(KERNEL)] * 8)
    profile = result.as_record(100.0)
    assert any("80.0% of sampled CPU" in w for w in records.profile_warnings(profile, result))
    good = attribute([sample(KERNEL)] * 10)
    assert records.profile_warnings(good.as_record(100.0), good) == []


def window(rps, cpu_us, profilers=None):
    return {"client": {"rps": rps, "duration_s": 8.0},
            "resources": {"server": {"cpu_us_per_req": cpu_us}},
            "profilers": profilers or {}}


def test_overhead_compares_windows_of_the_same_process():
    over = records.overhead(window(1000.0, 400.0),
                            window(900.0, 440.0, {"perf": {"cpu_s": 0.4}}))
    assert over["rps_change"] == -0.1
    assert over["server_cpu_change"] == 0.1
    assert over["profilers_cpu_s"] == 0.4 and over["profilers_cores"] == 0.05


def test_categories_are_the_issues_list():
    assert list(rules.CATEGORIES) == ["kernel", "interpreter", "event_loop", "http", "json",
                                      "validation", "db_driver", "pool", "tensor", "model",
                                      "allocator", "timers_stats", "other"]
