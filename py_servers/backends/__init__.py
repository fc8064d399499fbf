"""Model runtimes behind the HTTP core.

A backend is a tiny object: it loads its weights once and exposes

    name: str                                  # the --backend value
    infer(x: np.ndarray) -> np.ndarray         # x: (N, 40) float32, C-contiguous -> (N,) float32 scores
    runtime_threads() -> dict                  # thread settings as the runtime reports them now

with the sigmoid applied. `BACKENDS` maps each --backend value to the module that provides it; the
module is imported only when chosen (importing torch costs ~300 MB that an ONNX server should not
carry), its `MODEL_FILE` names the file it needs in --model-dir (or None), and its `load(model_dir)`
returns the backend. A new runtime (e.g. the PyO3 Candle binding) joins by
adding one module and one entry here.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def runtime_threads(self) -> dict: ...


class BackendError(Exception):
    """A backend could not be loaded (missing file, wrong model); the message is for the user."""


BACKENDS: dict[str, str] = {
    "torch": "py_servers.backends.torch_backend",
    "onnx": "py_servers.backends.onnx_backend",
    "none": "py_servers.backends.none_backend",
    "candle": "py_servers.backends.candle_backend",
}


def _module(name: str):
    try:
        module_name = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
    return importlib.import_module(module_name)


def check_backend(name: str, model_dir: Path) -> None:
    """Fail early (before binding or forking) on an unknown backend or a missing model file.
    Backend modules import their runtime lazily, so this stays cheap."""
    filename = _module(name).MODEL_FILE
    if filename is not None:
        model_file(model_dir, filename)


def load_backend(name: str, model_dir: Path) -> Backend:
    return _module(name).load(Path(model_dir))


def model_file(model_dir: Path, filename: str) -> Path:
    path = Path(model_dir) / filename
    if not path.is_file():
        raise BackendError(f"model file {path} not found: run `make model`")
    return path


def runtime_threads(backend: Backend) -> dict:
    """The backend's thread settings read back from its runtime (not the values we asked for),
    plus every native thread pool threadpoolctl finds (numpy's BLAS, OpenMP) when it is installed;
    it is not a dependency of rankbench, so without it that key is absent."""
    report = dict(backend.runtime_threads())
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return report
    report["threadpools"] = [
        {key: pool.get(key) for key in ("user_api", "internal_api", "prefix", "num_threads")}
        for pool in threadpool_info()]
    return report


def warm_up(backend: Backend, batch_sizes=(1, 10, 100, 1000), rounds: int = 3) -> None:
    """Run the first calls (allocation, JIT profiling, kernel selection) before the socket listens,
    and check the output shape once, so a wrong model fails at start and not on a request."""
    rng = np.random.default_rng(0)
    for n in batch_sizes:
        x = rng.standard_normal((n, 40), dtype=np.float32)
        for _ in range(rounds):
            scores = backend.infer(x)
        if scores.shape != (n,) or scores.dtype != np.float32:
            raise BackendError(f"backend {backend.name!r} returned {scores.dtype}{scores.shape} "
                               f"for a batch of {n}; expected float32({n},)")
