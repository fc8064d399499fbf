"""PyTorch on CPU: artifacts/ranknet.pt (TorchScript, x (N, 40) -> scores (N,))."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from py_servers.backends import BackendError, model_file

MODEL_FILE = "ranknet.pt"


class TorchBackend:
    name = "torch"

    def __init__(self, path: Path):
        import torch

        # One intra-op and one inter-op thread per worker (set before any op runs).
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process (e.g. a second load in tests)
            pass
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 flags TorchScript as deprecated; the artifact is TorchScript by
                # contract, and the warning would be the only line a healthy server prints.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError/ValueError for bad archives
            raise BackendError(f"cannot load {path}: {exc}") from None
        module.eval()
        self._module = module
        self._torch = torch
        self._inference_mode = torch.inference_mode
        self._from_numpy = torch.from_numpy

    def infer(self, x: np.ndarray) -> np.ndarray:
        with self._inference_mode():
            return self._module(self._from_numpy(x)).reshape(-1).numpy()

    def runtime_threads(self) -> dict:
        torch = self._torch
        return {"num_threads": torch.get_num_threads(),
                "num_interop_threads": torch.get_num_interop_threads()}


def load(model_dir: Path) -> TorchBackend:
    return TorchBackend(model_file(model_dir, MODEL_FILE))
