"""Train RankNet and export it: `python -m seed.model [--force]`.

RankNet of the contract: Linear(40,256) -> ReLU -> Linear(256,128) -> ReLU -> Linear(128,1) ->
sigmoid, 43,521 parameters. It is trained with the RankNet pairwise loss with
RankNet's probabilistic targets, BCE(sigmoid(s_i - s_j), sigmoid((rel_i - rel_j) / T)) on logits s,
on synthetic (user, item_i, item_j) triples
drawn from the same standard-normal distribution as the seeded tables, against a hidden relevance
function that mixes user and item features. Training is single-threaded with fixed seeds, so a
rerun on the same machine gives the same weights. The RankNet loss fixes only score differences,
and the soft targets keep logits in a few units (hard 0/1 targets drive them to
saturation, where float32 scores tie at 1.0); the output bias is then centred on the median logit of the held-out set: ranking is untouched
and the served scores spread over (0, 1) around 0.5.

Exports, all from the same weights, into artifacts/: ranknet.pt (TorchScript), ranknet.onnx
(input x (N,40), output score (N,), dynamic N), ranknet.safetensors, manifest.json and
parity_fixture.json (inputs and plain-numpy scores that the Rust tests check against).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from rankbench.config import ARTIFACTS_DIR, INPUT_FEATURES, ITEM_FEATURES, USER_FEATURES
from rankbench.reference import PARAMETER_COUNT, TENSOR_SHAPES, load_reference

TRAIN_SEED = 7
STEPS = 1500
BATCH_PAIRS = 512
LEARNING_RATE = 2e-3
HELD_OUT_PAIRS = 20_000
TARGET_TEMPERATURE = 3.0  # relevance units per logit unit in the soft pair targets
ONNX_OPSET = 17
ARTIFACT_FILES = ("ranknet.pt", "ranknet.onnx", "ranknet.safetensors", "manifest.json",
                  "parity_fixture.json")


def hidden_relevance(users: np.ndarray, items: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """What the model has to learn: a user-dependent bilinear preference plus item-only effects."""
    taste = users @ projection                       # (N, 10): the user's weight on each item feature
    bilinear = np.sum(taste * items, axis=1)
    return bilinear + 0.8 * np.tanh(items[:, 0] * items[:, 1]) + 0.5 * items[:, 2] ** 2 / 2


class PairSampler:
    def __init__(self, seed: int):
        self.rng = np.random.Generator(np.random.PCG64(seed))
        projection_rng = np.random.Generator(np.random.PCG64([seed, 99]))
        self.projection = (projection_rng.standard_normal((USER_FEATURES, ITEM_FEATURES))
                           / np.sqrt(USER_FEATURES)).astype(np.float32)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        users = self.rng.standard_normal((n, USER_FEATURES), dtype=np.float32)
        item_i = self.rng.standard_normal((n, ITEM_FEATURES), dtype=np.float32)
        item_j = self.rng.standard_normal((n, ITEM_FEATURES), dtype=np.float32)
        rel_i = hidden_relevance(users, item_i, self.projection)
        rel_j = hidden_relevance(users, item_j, self.projection)
        target = (1.0 / (1.0 + np.exp(-(rel_i - rel_j) / TARGET_TEMPERATURE))).astype(np.float32)
        return np.hstack([users, item_i]), np.hstack([users, item_j]), target


def build_module():
    import torch
    from torch import nn

    class RankNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(INPUT_FEATURES, 256)
            self.fc2 = nn.Linear(256, 128)
            self.fc3 = nn.Linear(128, 1)

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x))))).squeeze(-1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logits(x))

    return RankNet()


def train(seed: int = TRAIN_SEED, steps: int = STEPS) -> tuple[object, dict]:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)   # one thread: same weights on any machine with the same torch build
    torch.use_deterministic_algorithms(True)
    sampler = PairSampler(seed)
    model = build_module()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.perf_counter()
    recent: list[float] = []
    for _ in range(steps):
        xi, xj, target = (torch.from_numpy(a) for a in sampler.pairs(BATCH_PAIRS))
        loss = loss_fn(model.logits(xi) - model.logits(xj), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-50:]
    train_seconds = time.perf_counter() - started

    held_out = PairSampler(seed + 1)
    held_out.projection = sampler.projection  # same hidden function, fresh pairs
    xi, xj, target = held_out.pairs(HELD_OUT_PAIRS)
    with torch.inference_mode():
        si = model.logits(torch.from_numpy(xi))
        sj = model.logits(torch.from_numpy(xj))
        accuracy = float(((si > sj).numpy() == (target > 0.5)).mean())
        held_out_loss = float(loss_fn(si - sj, torch.from_numpy(target)))
        # Centre the output bias on the median held-out logit (ranking unchanged).
        median_logit = float(torch.median(torch.cat([si, sj])))
        model.fc3.bias -= median_logit
        scores = model(torch.from_numpy(np.vstack([xi, xj]))).numpy()
    stats = {
        "train_seed": seed, "steps": steps, "batch_pairs": BATCH_PAIRS, "learning_rate": LEARNING_RATE,
        "target_temperature": TARGET_TEMPERATURE,
        "final_loss": float(np.mean(recent)), "held_out_pairs": HELD_OUT_PAIRS,
        "held_out_pairwise_accuracy": accuracy, "held_out_loss": held_out_loss,
        # The lowest loss soft targets allow (their mean binary entropy): final_loss is read against it.
        "target_entropy": float(np.mean(-target * np.log(target) - (1 - target) * np.log(1 - target))), "train_seconds": round(train_seconds, 2),
        "bias_shift": -median_logit,
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in
                            ("0.01", "0.1", "0.5", "0.9", "0.99")},
        "torch": torch.__version__,
    }
    return model.eval(), stats


def export(model, stats: dict, out_dir: Path) -> dict:
    import torch
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().numpy().astype(np.float32).copy() for name, p in model.named_parameters()}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == TENSOR_SHAPES
    save_file(tensors, str(out_dir / "ranknet.safetensors"))

    example = torch.zeros((4, INPUT_FEATURES), dtype=torch.float32)
    with warnings.catch_warnings():
        # TorchScript and the TorchScript-based ONNX exporter are what the contract asks for; torch
        # 2.x flags both as deprecated on every call.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        torch.jit.save(torch.jit.script(model), str(out_dir / "ranknet.pt"))
        torch.onnx.export(model, (example,), str(out_dir / "ranknet.onnx"), input_names=["x"],
                          output_names=["score"], dynamic_axes={"x": {0: "N"}, "score": {0: "N"}},
                          opset_version=ONNX_OPSET, dynamo=False)

    reference = load_reference(out_dir)
    rng = np.random.Generator(np.random.PCG64([TRAIN_SEED, 5]))
    inputs = rng.standard_normal((16, INPUT_FEATURES), dtype=np.float32)
    fixture = {"note": "inputs (N,40) float32 and plain-numpy scores of ranknet.safetensors",
               "inputs": inputs.tolist(), "scores": reference.scores(inputs).tolist()}
    (out_dir / "parity_fixture.json").write_text(json.dumps(fixture))

    manifest = {
        "model": "RankNet", "architecture": "Linear(40,256)-ReLU-Linear(256,128)-ReLU-Linear(128,1)-sigmoid",
        "parameters": PARAMETER_COUNT,
        "tensors": {k: {"shape": list(v), "dtype": "float32"} for k, v in TENSOR_SHAPES.items()},
        "onnx": {"input": "x", "output": "score", "opset": ONNX_OPSET, "dynamic_axis": "N"},
        **stats,
        "sha256": {name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
                   for name in ("ranknet.pt", "ranknet.onnx", "ranknet.safetensors")},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def ensure_model(out_dir: Path = ARTIFACTS_DIR, force: bool = False, quiet: bool = False) -> dict:
    manifest_path = out_dir / "manifest.json"
    if not force and all((out_dir / name).exists() for name in ARTIFACT_FILES):
        manifest = json.loads(manifest_path.read_text())
        if not quiet:
            print(f"model: artifacts present in {out_dir} (held-out pairwise accuracy "
                  f"{manifest['held_out_pairwise_accuracy']:.3f}); use FORCE=1 to retrain")
        return manifest
    model, stats = train()
    manifest = export(model, stats, out_dir)
    if not quiet:
        print(f"model: trained {PARAMETER_COUNT} parameters in {stats['train_seconds']:.1f} s, "
              f"final loss {stats['final_loss']:.4f}, held-out pairwise accuracy "
              f"{stats['held_out_pairwise_accuracy']:.3f}; exported to {out_dir}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seed.model", description="Train and export RankNet.")
    parser.add_argument("--force", action="store_true", help="retrain even if artifacts exist")
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR)
    args = parser.parse_args(argv)
    try:
        ensure_model(args.out, force=args.force)
    except (OSError, ImportError, ValueError) as exc:
        print(f"model: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
