"""py_servers' `candle` backend: the extension behind the backend interface of py_servers."""
from __future__ import annotations

import numpy as np
import pytest

from py_servers.backends import BACKENDS, BackendError, warm_up
from rankbench.reference import load_reference


@pytest.fixture(scope="module")
def candle_backend(rc):
    from py_servers.backends import candle_backend

    return candle_backend


def test_backend_scores_equal_the_numpy_reference(candle_backend, model_dir):
    backend = candle_backend.load(model_dir)
    assert backend.name == "candle"
    warm_up(backend)   # what a server worker runs before it listens: shapes and dtype checked
    x = np.random.default_rng(21).standard_normal((100, 40), dtype=np.float32)
    scores = backend.infer(x)
    assert scores.dtype == np.float32 and scores.shape == (100,)
    assert np.max(np.abs(scores - load_reference(model_dir).scores(x))) < 1e-5


def test_backend_keeps_freed_memory_like_the_rust_server(candle_backend, model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(candle_backend.rankbench_candle, "keep_freed_memory",
                        lambda: calls.append(True) or True)
    candle_backend.load(model_dir)
    assert calls == [True]


def test_backend_names_its_model_file(candle_backend):
    assert candle_backend.MODEL_FILE == "ranknet.safetensors"


def test_missing_model_is_a_backend_error(candle_backend, tmp_path):
    with pytest.raises(BackendError, match="ranknet.safetensors not found"):
        candle_backend.load(tmp_path)


def test_unreadable_model_is_a_backend_error(candle_backend, tmp_path):
    (tmp_path / "ranknet.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BackendError, match="cannot load .*ranknet.safetensors"):
        candle_backend.load(tmp_path)


def test_backend_is_registered():
    """Fails until `"candle": "py_servers.backends.candle_backend"` is in BACKENDS."""
    assert BACKENDS.get("candle") == "py_servers.backends.candle_backend"
