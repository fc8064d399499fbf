"""The rankbench_candle extension: candle_server's RankNet called from Python through PyO3.

Scores against the plain-numpy oracle, input checking, load errors, one compute thread, the GIL
released during the forward pass, and the build it came from.
"""
from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rankbench.config import ROOT
from rankbench.reference import TENSOR_SHAPES, load_reference

TOLERANCE = 1e-5


def rows(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 40), dtype=np.float32)
            * np.float32(scale))


# -- scores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000])
def test_scores_equal_the_numpy_reference(model, model_dir, n):
    reference = load_reference(model_dir)
    for seed, scale in [(n, 1.0), (n + 1, 3.0)]:
        x = rows(n, seed, scale)
        scores = model.infer(x)
        assert scores.dtype == np.float32 and scores.shape == (n,)
        expected = reference.scores(x)
        assert np.max(np.abs(scores - expected)) < TOLERANCE
    # The scores spread over (0, 1) (a constant output would pass a loose comparison by luck).
    if n >= 100:
        assert scores.min() < 0.2 and scores.max() > 0.8


def test_scores_equal_the_parity_fixture(model, model_dir):
    fixture = json.loads((model_dir / "parity_fixture.json").read_text())
    x = np.array(fixture["inputs"], dtype=np.float32)
    expected = np.array(fixture["scores"], dtype=np.float64)
    assert x.shape == (len(expected), 40)
    scores = model.infer(x)
    assert np.max(np.abs(scores - expected)) < TOLERANCE
    assert np.max(np.abs(scores - load_reference(model_dir).scores(x))) < TOLERANCE


def test_rows_are_scored_independently_and_in_order(model):
    x = rows(50, seed=7)
    together = model.infer(x)
    one_by_one = np.concatenate([model.infer(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.infer(x[::-1].copy()), together[::-1])


def test_empty_batch_gives_empty_scores(model):
    scores = model.infer(np.zeros((0, 40), dtype=np.float32))
    assert scores.dtype == np.float32 and scores.shape == (0,)


def test_output_is_a_fresh_array_and_input_is_untouched(model):
    x = rows(10, seed=3)
    kept = x.copy()
    first = model.infer(x)
    second = model.infer(x)
    np.testing.assert_array_equal(x, kept)
    assert first.flags.writeable and first.flags.c_contiguous
    assert not np.shares_memory(first, second) and not np.shares_memory(first, x)
    first[:] = -1.0   # writing into one result must not change another
    assert np.all(second > 0.0)


def test_read_only_input_is_accepted(model):
    x = rows(5, seed=4)
    expected = model.infer(x)
    x.setflags(write=False)
    np.testing.assert_array_equal(model.infer(x), expected)


def test_one_row_views_that_are_c_contiguous_are_accepted(model):
    x = rows(20, seed=5)
    view = x[3:9]            # a C-contiguous slice of rows, not the start of the buffer
    assert view.flags.c_contiguous and not view.flags.owndata
    np.testing.assert_array_equal(model.infer(view), model.infer(x)[3:9])


# -- bad input: a Python exception that says what is wrong, never a crash -----------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.dtype(">f4")])
def test_wrong_dtype_is_a_type_error(model, dtype):
    x = rows(4).astype(dtype)
    with pytest.raises(TypeError, match=r"dtype float32.*got"):
        model.infer(x)


@pytest.mark.parametrize("value", [[[0.0] * 40], None, "x", 3.0])
def test_not_an_array_is_a_type_error(model, value):
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        model.infer(value)


@pytest.mark.parametrize("shape", [(40,), (3, 39), (3, 41), (0, 39), (2, 3, 40), (40, 3), ()])
def test_wrong_shape_is_a_value_error(model, shape):
    x = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(N, 40\); got \("):
        model.infer(x)


def test_non_contiguous_input_is_a_value_error(model):
    x = rows(10)
    wide = np.zeros((10, 80), dtype=np.float32)
    for bad in (x[::2], np.asfortranarray(x), wide[:, :40], wide[:, ::2]):
        assert bad.shape[1] == 40 and not bad.flags.c_contiguous
        with pytest.raises(ValueError, match="C-contiguous"):
            model.infer(bad)


def test_misaligned_input_is_a_value_error(model):
    buffer = bytearray(4 * 40 * 3 + 1)
    x = np.frombuffer(buffer, dtype=np.float32, count=120, offset=1).reshape(3, 40)
    assert x.flags.c_contiguous and not x.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        model.infer(x)


# -- loading -----------------------------------------------------------------------------------
def test_file_and_directory_load_the_same_model(rc, model_dir, model):
    by_file = rc.RankNet(str(model_dir / "ranknet.safetensors"))
    assert by_file.path == model.path == model_dir / "ranknet.safetensors"
    x = rows(10, seed=9)
    np.testing.assert_array_equal(by_file.infer(x), model.infer(x))


def test_missing_file_is_file_not_found_naming_the_path(rc, tmp_path):
    missing = tmp_path / "nowhere" / "ranknet.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        rc.RankNet(missing)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)
    assert str(missing) in str(info.value) and "make model" in str(info.value)
    # A directory without the weights names the file it looked for.
    with pytest.raises(FileNotFoundError) as info:
        rc.RankNet(tmp_path)
    assert info.value.filename == str(tmp_path / "ranknet.safetensors")


def test_corrupt_file_is_a_value_error_naming_the_path(rc, tmp_path):
    bad = tmp_path / "ranknet.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=f"cannot load model from {bad}"):
        rc.RankNet(bad)


def test_weights_of_another_shape_are_a_value_error(rc, model_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model_dir / "ranknet.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == TENSOR_SHAPES
    tensors["fc2.weight"] = np.ascontiguousarray(tensors["fc2.weight"].T)   # (256, 128)
    path = tmp_path / "ranknet.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="fc2.weight"):
        rc.RankNet(path)
    del tensors["fc3.bias"]
    tensors["fc2.weight"] = np.ascontiguousarray(tensors["fc2.weight"].T)
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="fc3.bias"):
        rc.RankNet(path)


# -- threads and the GIL -------------------------------------------------------------------------
def test_candle_uses_one_compute_thread(rc):
    assert rc.compute_threads() == 1


THREAD_PROBE = """
import os, sys
import numpy as np
import rankbench_candle

def threads():
    return len(os.listdir("/proc/self/task"))

model = rankbench_candle.RankNet(sys.argv[1])
if len(sys.argv) > 2:   # the control: ask Candle for more threads after the import
    os.environ["RAYON_NUM_THREADS"] = sys.argv[2]
before = threads()
# 4096 rows: large enough for gemm to split a matmul and for Candle's elementwise ops to use
# their thread pool (>= 64 Ki elements), were either allowed more than one thread.
x = np.random.default_rng(0).standard_normal((4096, 40), dtype=np.float32)
for _ in range(10):
    model.infer(x)
print(before, threads(), rankbench_candle.compute_threads())
"""


def _thread_counts(model_dir, *extra: str) -> tuple[int, int, int]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAYON_NUM_THREADS", "CANDLE_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(model_dir), *extra],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    before, after, reported = map(int, out.stdout.split())
    return before, after, reported


def test_large_batches_start_no_compute_threads(model_dir):
    before, after, reported = _thread_counts(model_dir)
    assert reported == 1
    assert after == before, f"{after - before} threads started by the forward passes"
    # The control: the same probe with Candle allowed 2 threads does start threads, so the count
    # above would have seen them.
    before, after, reported = _thread_counts(model_dir, "2")
    assert reported == 2 and after > before


def test_gil_is_released_during_the_forward_pass(model):
    """A second Python thread runs while `infer` is inside the forward pass.

    With the switch interval set far beyond the test's length, the interpreter never takes the
    GIL from the main thread by itself: the watcher thread can only run when the main thread
    gives the GIL up. Between `phase = "in_infer"` and `phase = "after"` the main thread runs no
    Python code other than the `infer` call, so the watcher can only ever record "in_infer" if
    `infer` released the GIL. (Holding the GIL, it would always record "after": no false pass.)
    The watcher must also be scheduled during the forward pass; the batch takes milliseconds and
    the check is retried, so a busy machine only makes it take longer.
    """
    x = rows(20_000, seed=11)
    state = {"phase": "before", "stop": False}
    seen: list[str] = []
    wake, parked = threading.Event(), threading.Event()

    def watcher():
        while True:
            parked.set()
            wake.wait()
            wake.clear()
            if state["stop"]:
                return
            seen.append(state["phase"])

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    thread = threading.Thread(target=watcher, daemon=True)
    try:
        thread.start()
        for _ in range(20):
            assert parked.wait(60), "watcher thread did not park"
            parked.clear()
            state["phase"] = "in_infer"
            wake.set()
            model.infer(x)
            state["phase"] = "after"
            assert parked.wait(60), "watcher thread did not run"
            if seen[-1] == "in_infer":
                break
    finally:
        sys.setswitchinterval(old_interval)
        state["stop"] = True
        wake.set()
        thread.join(10)
    assert "in_infer" in seen, f"the watcher only ran after infer returned: {seen}"


def test_concurrent_callers_get_the_same_scores(model):
    """The GIL is released, so several threads run forward passes on one model at once."""
    inputs = [rows(n, seed=100 + n) for n in (1, 10, 100, 1000, 37, 500)]
    expected = [model.infer(x) for x in inputs]
    failures: list[str] = []

    def worker(offset: int):
        for round_ in range(20):
            index = (offset + round_) % len(inputs)
            got = model.infer(inputs[index])
            if not np.array_equal(got, expected[index]):
                failures.append(f"thread {offset} round {round_} input {index}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc(rc):
    assert rc.keep_freed_memory() is True


# -- the build -----------------------------------------------------------------------------------
def test_extension_is_a_release_build(rc):
    info = rc.build_info()
    assert info["profile"] == "release" and info["opt_level"] == "3"
    assert info["debug_assertions"] is False


def _locked_versions(lock: Path) -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if line.startswith("name = "):
            name = line.split('"')[1]
        elif line.startswith("version = ") and name is not None:
            versions.setdefault(name, set()).add(line.split('"')[1])
            name = None
    return versions


# The crates whose code runs in the forward pass (gemm's SIMD kernels come from pulp).
FORWARD_PASS_CRATES = ("candle-core", "candle-nn", "gemm", "gemm-common", "gemm-f32", "pulp",
                       "half", "safetensors", "rayon", "rayon-core")


def test_extension_and_server_share_one_lock_file():
    """py-candle must run the very Candle and gemm the Rust server runs: both crates are members of
    one cargo workspace with ONE lock file, so they cannot resolve different versions."""
    import tomllib

    root = tomllib.loads((ROOT / "candle_server" / "Cargo.toml").read_text())
    assert "pyext" in root["workspace"]["members"]
    assert not (ROOT / "candle_server" / "pyext" / "Cargo.lock").exists()
    locked = _locked_versions(ROOT / "candle_server" / "Cargo.lock")
    assert all(locked.get(name) for name in FORWARD_PASS_CRATES), locked


def test_extension_reports_its_runtime_threads():
    import rankbench_candle

    threads = rankbench_candle.runtime_threads()
    assert threads["candle_get_num_threads"] == 1, threads
