"""The plain-numpy RankNet forward pass: the oracle every runtime is checked against.

It reads artifacts/ranknet.safetensors with the tensor names of docs/contract.md and computes in
float64 from the float32 weights, so that it is the most exact score any runtime could produce.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankbench.config import ARTIFACTS_DIR, INPUT_FEATURES

# Tensor names and shapes in ranknet.safetensors (PyTorch Linear layout: weight is (out, in)).
TENSOR_SHAPES = {
    "fc1.weight": (256, INPUT_FEATURES), "fc1.bias": (256,),
    "fc2.weight": (128, 256), "fc2.bias": (128,),
    "fc3.weight": (1, 128), "fc3.bias": (1,),
}
PARAMETER_COUNT = sum(int(np.prod(shape)) for shape in TENSOR_SHAPES.values())  # 43,521


@dataclass(frozen=True)
class ReferenceModel:
    tensors: dict[str, np.ndarray]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """sigmoid(fc3(relu(fc2(relu(fc1(x)))))) for x of shape (N, 40); returns (N,) float64."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != INPUT_FEATURES:
            raise ValueError(f"expected input of shape (N, {INPUT_FEATURES}), got {x.shape}")
        t = {k: v.astype(np.float64) for k, v in self.tensors.items()}
        h = np.maximum(x @ t["fc1.weight"].T + t["fc1.bias"], 0.0)
        h = np.maximum(h @ t["fc2.weight"].T + t["fc2.bias"], 0.0)
        logits = (h @ t["fc3.weight"].T + t["fc3.bias"])[:, 0]
        return 1.0 / (1.0 + np.exp(-logits))


def load_reference(model_dir: Path | str = ARTIFACTS_DIR) -> ReferenceModel:
    from safetensors.numpy import load_file

    path = Path(model_dir) / "ranknet.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `make model`")
    tensors = load_file(str(path))
    for name, shape in TENSOR_SHAPES.items():
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} missing")
        if tuple(tensors[name].shape) != shape or tensors[name].dtype != np.float32:
            raise ValueError(f"{path}: tensor {name!r} is {tensors[name].dtype}{tensors[name].shape}, "
                             f"expected float32{shape}")
    return ReferenceModel(tensors)
