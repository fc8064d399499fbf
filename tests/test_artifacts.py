"""The three exported files compute the same function as the plain-numpy forward pass."""
from __future__ import annotations

import asyncio
import json
import shutil

import asyncpg
import numpy as np
import pytest

from rankbench.reference import PARAMETER_COUNT, TENSOR_SHAPES, load_reference

TOLERANCE = 1e-5


def torch_scores(model_dir, x: np.ndarray) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    module = torch.jit.load(str(model_dir / "ranknet.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def onnx_scores(model_dir, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / "ranknet.onnx"), opts, providers=["CPUExecutionProvider"])
    return session.run(["score"], {"x": x})[0]


def max_differences(model_dir, x: np.ndarray) -> dict[str, float]:
    reference = load_reference(model_dir).scores(x)
    return {"torch": float(np.max(np.abs(torch_scores(model_dir, x) - reference))),
            "onnx": float(np.max(np.abs(onnx_scores(model_dir, x) - reference)))}


def random_rows(n: int = 1000) -> np.ndarray:
    return np.random.default_rng(1234).standard_normal((n, 40), dtype=np.float32)


def database_rows(dsn: str, n: int = 500) -> np.ndarray:
    async def fetch():
        conn = await asyncpg.connect(dsn)
        try:
            users = await conn.fetch("SELECT features FROM users WHERE id = ANY($1) ORDER BY id",
                                     list(range(1, 200_001, 200_000 // n)))
            items = await conn.fetch("SELECT features FROM items WHERE id = ANY($1) ORDER BY id",
                                     list(range(7, 100_001, 100_000 // n)))
            return users, items
        finally:
            await conn.close()

    users, items = asyncio.run(fetch())
    return np.array([u["features"] + i["features"] for u, i in zip(users, items)], dtype=np.float32)


def test_shapes_and_output_contract(model_dir):
    x = random_rows(7)
    for scores in (torch_scores(model_dir, x), onnx_scores(model_dir, x)):
        assert scores.shape == (7,) and scores.dtype == np.float32
    # Dynamic batch: one row and many rows both work.
    assert onnx_scores(model_dir, random_rows(1)).shape == (1,)
    assert torch_scores(model_dir, random_rows(1000)).shape == (1000,)


def test_parity_on_random_rows(model_dir):
    diffs = max_differences(model_dir, random_rows())
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_parity_on_database_rows(model_dir, dsn):
    rows = database_rows(dsn)
    assert rows.shape == (500, 40)
    diffs = max_differences(model_dir, rows)
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("victim", ["ranknet.pt", "ranknet.onnx", "ranknet.safetensors"])
def test_parity_check_catches_a_perturbed_file(model_dir, tmp_path, victim):
    """A parity check that passes whatever the files hold proves nothing: perturb one bias in one
    file by 1e-3 and the check must see it."""
    import onnx
    import torch
    from safetensors.numpy import load_file, save_file

    for name in ("ranknet.pt", "ranknet.onnx", "ranknet.safetensors"):
        shutil.copy(model_dir / name, tmp_path / name)
    if victim == "ranknet.safetensors":
        tensors = load_file(str(tmp_path / victim))
        tensors["fc3.bias"] = tensors["fc3.bias"] + np.float32(1e-3)
        save_file(tensors, str(tmp_path / victim))
    elif victim == "ranknet.pt":
        module = torch.jit.load(str(tmp_path / victim))
        with torch.no_grad():
            module.fc3.bias += 1e-3
        torch.jit.save(module, str(tmp_path / victim))
    else:
        proto = onnx.load(str(tmp_path / victim))
        bias = next(t for t in proto.graph.initializer if t.name.endswith("fc3.bias"))
        values = onnx.numpy_helper.to_array(bias) + np.float32(1e-3)
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(proto, str(tmp_path / victim))
    diffs = max_differences(tmp_path, random_rows(200))
    assert max(diffs.values()) > TOLERANCE, diffs


def test_manifest(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["parameters"] == PARAMETER_COUNT == 43_521
    assert {k: tuple(v["shape"]) for k, v in manifest["tensors"].items()} == TENSOR_SHAPES
    assert manifest["onnx"]["input"] == "x" and manifest["onnx"]["output"] == "score"
    assert manifest["onnx"]["opset"] >= 17
    assert isinstance(manifest["train_seed"], int)
    assert np.isfinite(manifest["final_loss"])
    # Clearly above chance, and the training got close to the best loss its soft targets allow.
    assert manifest["held_out_pairwise_accuracy"] >= 0.9
    assert manifest["held_out_loss"] - manifest["target_entropy"] < 0.02
    # Scores spread over (0, 1), not all near 0.5.
    q = manifest["score_quantiles"]
    assert q["0.1"] < 0.35 and q["0.9"] > 0.65


def test_parity_fixture_matches_the_reference(model_dir):
    fixture = json.loads((model_dir / "parity_fixture.json").read_text())
    x = np.asarray(fixture["inputs"], dtype=np.float32)
    assert x.shape == (16, 40)
    np.testing.assert_allclose(load_reference(model_dir).scores(x), fixture["scores"], atol=1e-12, rtol=0)
