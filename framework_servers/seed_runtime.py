"""The published stack's model code: a model that outputs logits, then `torch.sigmoid`.

The study's TorchScript and ONNX models returned logits and its servers applied `torch.sigmoid`
after them, so its ONNX Runtime server imported torch too. rankbench's artifacts put the sigmoid
inside the model (docs/contract.md), so applying torch.sigmoid to their output would change every
score. To do the study's work and still give the contract's answers, each runtime here runs the
artifact *without* its final sigmoid and then calls torch.sigmoid:
- TorchScript: `artifacts/ranknet.pt` exports `logits(x)` beside `forward(x) = sigmoid(logits(x))`,
  so the model call is the artifact's own compiled `logits` method;
- ONNX: the graph of `artifacts/ranknet.onnx` ends `... -> Squeeze -> Sigmoid -> score`; the
  Sigmoid node is removed at load time (the Squeeze then writes `score`) and the session is built
  from the edited graph in memory.
`check_logits` proves at start that sigmoid(logits) equals the artifact's own output.

Thread settings: `default` leaves each runtime as the study did (PyTorch's intra-op pool = cores;
an InferenceSession without SessionOptions: intra-op threads = cores, spinning on); `one` is
py_servers' setting for ONNX Runtime (one intra-op and one inter-op thread, sequential, no
spinning).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from py_servers.backends.onnx_backend import SPIN_KEYS

MODEL_FILES = {"torch": "ranknet.pt", "onnx": "ranknet.onnx"}
WARM_UP_SIZES = (1, 10, 100, 1000)


class ModelError(Exception):
    """The model cannot be used; the message is for the user."""


class TorchLogits:
    name = "torch"

    def __init__(self, path: Path, threads: str):
        import torch

        if threads == "one":
            torch.set_num_threads(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # TorchScript is the contract's format
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        if not hasattr(module, "logits"):
            raise ModelError(f"{path} has no `logits` method: run `make model FORCE=1`")
        self._module = module
        self._torch = torch

    def scores(self, x):
        """x: torch.Tensor (N, 40) -> torch.Tensor (N,) probabilities."""
        torch = self._torch
        with torch.no_grad():
            return torch.sigmoid(self._module.logits(x))

    def artifact_scores(self, x):
        with self._torch.no_grad():
            return self._module(x)

    def runtime_threads(self) -> dict:
        torch = self._torch
        return {"num_threads": torch.get_num_threads(),
                "num_interop_threads": torch.get_num_interop_threads(), "cores": os.cpu_count()}


def without_final_sigmoid(model):
    """The ONNX graph without the Sigmoid that produces its output (the output keeps its name)."""
    graph = model.graph
    output = graph.output[0].name
    producers = [n for n in graph.node if output in n.output]
    if len(producers) != 1 or producers[0].op_type != "Sigmoid":
        raise ModelError(f"expected the ONNX output {output!r} to come from a Sigmoid, found "
                            f"{[n.op_type for n in producers]}")
    sigmoid = producers[0]
    source = sigmoid.input[0]
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == source:
                node.output[i] = output
        for i, name in enumerate(node.input):
            if name == source:
                node.input[i] = output
    graph.node.remove(sigmoid)
    return model


class OnnxLogits:
    name = "onnx"

    def __init__(self, path: Path, threads: str):
        import onnx
        import onnxruntime as ort
        import torch

        try:
            original = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ModelError(f"cannot load {path}: {exc}") from None
        logits = without_final_sigmoid(onnx.load(str(path)))
        options = None       # the study: InferenceSession(path) with default options
        if threads == "one":
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            for key in SPIN_KEYS:
                options.add_session_config_entry(key, "0")
        self._session = ort.InferenceSession(logits.SerializeToString(), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._original = ort.InferenceSession(original.SerializeToString(),
                                              providers=["CPUExecutionProvider"])
        self._torch = torch

    def scores(self, x):
        torch = self._torch
        logits = self._session.run(None, {"x": x.numpy()})[0]
        return torch.sigmoid(torch.from_numpy(logits))

    def artifact_scores(self, x):
        return self._torch.from_numpy(self._original.run(None, {"x": x.numpy()})[0])

    def runtime_threads(self) -> dict:
        options = self._session.get_session_options()
        report = {"intra_op_num_threads": options.intra_op_num_threads,
                  "inter_op_num_threads": options.inter_op_num_threads,
                  "execution_mode": options.execution_mode.name, "cores": os.cpu_count(),
                  "note": "0 threads: ONNX Runtime's default, one per core"}
        for key in SPIN_KEYS:
            try:
                report[key] = options.get_session_config_entry(key)
            except RuntimeError:    # not set: ONNX Runtime's default (spinning on)
                report[key] = "default (1)"
        return report


RUNTIMES = {"torch": TorchLogits, "onnx": OnnxLogits}


def load(backend: str, model_dir: Path, threads: str):
    path = Path(model_dir) / MODEL_FILES[backend]
    if not path.is_file():
        raise ModelError(f"model file {path} not found: run `make model`")
    runtime = RUNTIMES[backend](path, threads)
    check_logits(runtime)
    if backend == "onnx":
        runtime._original = None        # only needed for the check
    return runtime


def check_logits(runtime, rounds: int = 3) -> None:
    """Warm up on every batch size and prove sigmoid(logits) == the artifact's own scores."""
    import torch

    rng = np.random.default_rng(0)
    for n in WARM_UP_SIZES:
        x = torch.tensor(rng.standard_normal((n, 40), dtype=np.float32))
        for _ in range(rounds):
            scores = runtime.scores(x)
        if tuple(scores.shape) != (n,) or scores.dtype != torch.float32:
            raise ModelError(f"{runtime.name}: scores {scores.dtype}{tuple(scores.shape)} for a "
                                f"batch of {n}; expected float32({n},)")
        gap = float((scores - runtime.artifact_scores(x)).abs().max())
        if gap > 1e-6:
            raise ModelError(f"{runtime.name}: sigmoid(logits) differs from the artifact's "
                                f"scores by {gap:.2e}")
