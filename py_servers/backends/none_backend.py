"""No model: every score is 0.0. The DB-and-HTTP floor the real runtimes are compared with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

MODEL_FILE = None


class NoneBackend:
    name = "none"

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(x.shape[0], dtype=np.float32)

    def runtime_threads(self) -> dict:
        return {}


def load(model_dir: Path) -> NoneBackend:
    return NoneBackend()
