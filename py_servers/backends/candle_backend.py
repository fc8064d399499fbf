"""Candle through PyO3: artifacts/ranknet.safetensors scored by candle_server's own model code.

The runtime is the `rankbench_candle` extension (candle_server/pyext, built by `make build`): the
same `candle_server::model::RankNet`, the same Candle and gemm versions and the same release
profile as the Rust server, so this backend and the Rust server differ only in the server layer.
The extension pins Candle to one compute thread when it is imported and releases the GIL during the
forward pass.
Like the Rust server at start, the worker keeps glibc from returning the forward pass's freed
buffers to the kernel (see `keep_freed_memory`); ONNX Runtime and PyTorch have their own caches.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from py_servers.backends import BackendError, model_file

try:
    import rankbench_candle
except ImportError as exc:  # raised at backend selection, before the server binds or forks
    raise BackendError(f"the rankbench_candle extension is not installed ({exc}): "
                       "run `make build` (or candle_server/pyext/install.sh)") from None

MODEL_FILE = "ranknet.safetensors"


class CandleBackend:
    name = "candle"

    def __init__(self, path: Path):
        rankbench_candle.keep_freed_memory()
        try:
            model = rankbench_candle.RankNet(path)
        except (OSError, ValueError) as exc:   # the message names the file
            raise BackendError(str(exc)) from None
        self._infer = model.infer

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._infer(x)

    def runtime_threads(self) -> dict:
        read = getattr(rankbench_candle, "runtime_threads", None)
        if read is None:
            return {"error": "rankbench_candle.runtime_threads() is missing from the installed "
                             "extension: rebuild it with `make build`"}
        report = read()
        if not isinstance(report, dict):
            return {"error": f"rankbench_candle.runtime_threads() returned a "
                             f"{type(report).__name__}, expected a dict"}
        return report


def load(model_dir: Path) -> CandleBackend:
    return CandleBackend(model_file(model_dir, MODEL_FILE))
