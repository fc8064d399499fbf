"""ONNX Runtime on CPU: artifacts/ranknet.onnx (input `x` (N, 40), output `score` (N,))."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from py_servers.backends import BackendError, model_file

MODEL_FILE = "ranknet.onnx"
SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op thread per worker, no inter-op parallelism, and no spinning: a spinning
        # worker thread would burn the core that the event loop and PostgreSQL need.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for key in SPIN_KEYS:
            options.add_session_config_entry(key, "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"cannot load {path}: {exc}") from None
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != ["x"] or "score" not in outputs:
            raise BackendError(f"{path}: expected input 'x' and output 'score', "
                               f"found inputs {inputs} and outputs {outputs}")
        self._outputs = ["score"]
        self._run = self._session.run

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._run(self._outputs, {"x": x})[0].reshape(-1)

    def runtime_threads(self) -> dict:
        """The options as the session holds them (get_session_options() returns the session's
        own copy, not the SessionOptions object this module built)."""
        options = self._session.get_session_options()
        report = {"intra_op_num_threads": options.intra_op_num_threads,
                  "inter_op_num_threads": options.inter_op_num_threads,
                  "graph_optimization_level": options.graph_optimization_level.name,
                  "execution_mode": options.execution_mode.name}
        for key in SPIN_KEYS:
            try:
                report[key] = options.get_session_config_entry(key)
            except RuntimeError:    # the session has no such entry: nothing to report
                pass
        return report


def load(model_dir: Path) -> OnnxBackend:
    return OnnxBackend(model_file(model_dir, MODEL_FILE))
