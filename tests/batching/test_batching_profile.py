"""The `batch` bench profile (make bench-batch): per-request and micro-batching servers side by side,
its default server list limited to what the registry knows."""
from __future__ import annotations

from bench.settings import PROFILES, registered, resolve
from rankbench.servers import SERVERS


def test_batch_profile_defaults_to_registered_servers_only(monkeypatch):
    settings, _ = resolve(["--profile", "batch"], environ={})
    assert settings.items == (10, 100) and settings.concurrency == (1, 8, 32, 128)
    assert settings.repeats == 2
    assert settings.servers == tuple(n for n in PROFILES["batch"].servers if n in SERVERS)
    assert {"py-onnx", "py-onnx-batch", "py-none-batch", "candle"} <= set(settings.servers)
    # A server the profile names before it is registered (candle-batch) is left out, not an error.
    monkeypatch.delitem(SERVERS, "candle-batch", raising=False)
    assert "candle-batch" not in resolve(["--profile", "batch"], environ={})[0].servers
    assert registered(("py-onnx", "no-such-server")) == ("py-onnx",)
    assert registered(None) is None


def test_servers_named_in_the_environment_or_flags_win_over_the_profile():
    settings, _ = resolve(["--profile", "batch"], environ={"SERVERS": "py-onnx-batch"})
    assert settings.servers == ("py-onnx-batch",)
    settings, _ = resolve(["--profile", "batch", "--servers", "py-none,py-none-batch"], environ={})
    assert settings.servers == ("py-none", "py-none-batch")
    assert resolve(["--profile", "quick"], environ={})[0].servers is None
