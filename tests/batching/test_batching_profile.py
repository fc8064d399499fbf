"""The `batch` bench profile (make bench-batch): per-request and micro-batching servers side by side,
chosen by the registry's batch study, not by names in the profile."""
from __future__ import annotations

from bench import checks
from bench.settings import resolve
from rankbench.servers import SERVERS, study


def test_batch_profile_runs_the_batch_study():
    settings, _ = resolve(["--profile", "batch"], environ={})
    assert settings.items == (10, 100) and settings.concurrency == (1, 8, 32, 128)
    assert settings.repeats == 2 and settings.study == "batch" and settings.servers is None
    members = set(study("batch"))
    assert {"py-onnx", "py-onnx-batch", "py-none-batch", "candle"} <= members
    chosen, skipped = checks.select_servers(None, SERVERS, "batch")
    assert set(chosen) | set(skipped) == members
    assert all(SERVERS[n].variant in ("per-request", "micro-batching") for n in members)


def test_servers_named_in_the_environment_or_flags_win_over_the_profile():
    settings, _ = resolve(["--profile", "batch"], environ={"SERVERS": "py-onnx-batch"})
    assert settings.servers == ("py-onnx-batch",)
    settings, _ = resolve(["--profile", "batch", "--servers", "py-none,py-none-batch"], environ={})
    assert settings.servers == ("py-none", "py-none-batch")
    assert resolve(["--profile", "quick"], environ={})[0].servers is None
