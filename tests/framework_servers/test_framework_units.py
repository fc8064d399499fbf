"""Units of framework_servers without a socket: the published stack's strict request model, the
contract's error messages built from pydantic errors, the stage arithmetic, the ONNX graph without
its final sigmoid, and the API-key gate."""
from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from framework_servers import common
from framework_servers.seed_app import RankRequest, sqlalchemy_url

INT64_MAX = 2**63 - 1


def rejected_field(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        RankRequest.model_validate(body)
    return common.validation_message(info.value.errors())


def test_valid_request_with_default_top_k_and_unknown_fields_ignored():
    req = RankRequest.model_validate({"user_id": 7, "item_ids": [1, 2, 2], "extra": {"a": 1}})
    assert (req.user_id, req.item_ids, req.top_k) == (7, [1, 2, 2], 10)
    assert RankRequest.model_validate(
        {"user_id": -INT64_MAX - 1, "item_ids": [INT64_MAX], "top_k": 1000}).top_k == 1000


@pytest.mark.parametrize("body,field", [
    ({"user_id": True, "item_ids": [1]}, "user_id"),
    ({"user_id": "7", "item_ids": [1]}, "user_id"),
    ({"user_id": 7.0, "item_ids": [1]}, "user_id"),
    ({"user_id": INT64_MAX + 1, "item_ids": [1]}, "user_id"),
    ({"user_id": None, "item_ids": [1]}, "user_id"),
    ({"item_ids": [1]}, "user_id"),
    ({"user_id": 7, "item_ids": [1, True]}, "item_ids[1]"),
    ({"user_id": 7, "item_ids": [1, "3"]}, "item_ids[1]"),
    ({"user_id": 7, "item_ids": [2.0]}, "item_ids[0]"),
    ({"user_id": 7, "item_ids": [-(2**63) - 1]}, "item_ids[0]"),
    ({"user_id": 7, "item_ids": []}, "item_ids"),
    ({"user_id": 7, "item_ids": list(range(1001))}, "item_ids"),
    ({"user_id": 7, "item_ids": (1, 2)}, "item_ids"),
    ({"user_id": 7, "item_ids": [1], "top_k": 0}, "top_k"),
    ({"user_id": 7, "item_ids": [1], "top_k": 1001}, "top_k"),
    ({"user_id": 7, "item_ids": [1], "top_k": True}, "top_k"),
    ({"user_id": 7, "item_ids": [1], "top_k": "5"}, "top_k"),
])
def test_strict_validation_names_the_field(body, field):
    message = rejected_field(body)
    assert message.startswith(f"{field}: "), message


def test_error_message_never_quotes_the_input():
    message = rejected_field({"user_id": "U" * 50_000, "item_ids": [1]})
    assert "UUUU" not in message and len(message) < 300


def test_body_level_errors():
    assert common.validation_message([{"type": "json_invalid", "loc": ("body", 3),
                                       "msg": "JSON decode error",
                                       "ctx": {"error": "Expecting value"}}]) \
        == "malformed JSON: Expecting value"
    with pytest.raises(ValidationError) as info:
        RankRequest.model_validate([7, [12]])
    assert "JSON object" in common.validation_message(info.value.errors())


def test_stages_with_and_without_inference():
    marks = common.Marks(100)
    marks.parsed, marks.fetched = 150, 400
    assert common.stages_of(marks, 500) == (50, 250, None, None, 100, 400)
    marks.pre, marks.infer = 450, 480
    assert common.stages_of(marks, 500) == (50, 250, 50, 30, 20, 400)
    assert common.stages_of(common.Marks(100), 500) is None      # the endpoint never ran


def test_sqlalchemy_url_uses_psycopg():
    assert sqlalchemy_url("postgresql://bench@127.0.0.1:55432/bench") == \
        "postgresql+psycopg://bench@127.0.0.1:55432/bench"
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"


def test_onnx_graph_without_final_sigmoid_gives_logits(model_dir):
    import onnx
    import onnxruntime as ort

    from framework_servers.seed_runtime import without_final_sigmoid

    path = model_dir / "ranknet.onnx"
    logits = without_final_sigmoid(onnx.load(str(path)))
    assert "Sigmoid" not in [n.op_type for n in logits.graph.node]
    x = np.random.default_rng(3).standard_normal((64, 40), dtype=np.float32)
    raw = ort.InferenceSession(logits.SerializeToString()).run(None, {"x": x})[0]
    scores = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert raw.shape == (64,)
    assert np.abs(1 / (1 + np.exp(-raw.astype(np.float64))) - scores).max() < 1e-6
    assert (raw < 0).any()          # logits, not probabilities


def test_without_final_sigmoid_refuses_another_graph(model_dir):
    import onnx

    from framework_servers.seed_runtime import ModelError, without_final_sigmoid

    model = without_final_sigmoid(onnx.load(str(model_dir / "ranknet.onnx")))
    with pytest.raises(ModelError, match="Sigmoid"):
        without_final_sigmoid(model)


def _call(app, method: str, path: str, headers: list[tuple[bytes, bytes]]):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent


def test_api_key_gate():
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    gate = common.ApiKeyGate(inner, "k3y")
    denied = _call(gate, "GET", "/nope", [(b"x-api-key", b"wrong")])
    assert denied[0]["status"] == 401
    assert orjson.loads(denied[1]["body"]) == {"error": "missing or invalid API key"}
    _call(gate, "POST", "/rank", [(b"x-api-key", b"k3y")])
    _call(gate, "GET", "/health", [])
    assert _call(gate, "POST", "/health", [])[0]["status"] == 401
    assert reached == ["/rank", "/health"]
