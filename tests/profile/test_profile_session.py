"""A whole profiling run end to end, on the bench's fake contract server (two worker processes,
synthetic data): perf over the process tree, py-spy in its own window, attribution, records, flame
graphs and the report. Short windows: this checks the pipeline, not the figures."""
from __future__ import annotations

import io
import json
import sys
from dataclasses import replace

import pytest

from bench.profiling import tools
from bench.profiling.session import ProfileSession
from bench.profiling.settings import resolve
from rankbench.config import ROOT
from rankbench.servers import ServerSpec, _interpreter_facet

FAKE = ROOT / "tests" / "bench" / "bench_fake_server.py"


@pytest.fixture
def profilers():
    try:
        tools.check_perf()
    except tools.ProfilerUnavailable as exc:
        pytest.skip(f"perf cannot record here: {exc}")
    if tools.pyspy_binary() is None:
        pytest.skip("py-spy is not installed (make setup installs it into .venv)")


def test_profile_run_end_to_end(dsn, profilers, tmp_path):
    spec = ServerSpec("fake-floor", language="python", http="fake-http", runtime="none",
                      interpreter=_interpreter_facet(), backend="fake", default_port=0,
                      build_command=lambda common: [sys.executable, str(FAKE), *common,
                                                    "--data", "synthetic"],
                      startup_timeout_s=30.0, studies=("main",))
    from bench.serverproc import free_port
    spec = replace(spec, default_port=free_port())
    settings, profiler, _ = resolve(["--duration", "2", "--warmup", "1", "--concurrency", "4",
                                     "--workers", "2", "--results", str(tmp_path)], environ={})
    out = io.StringIO()
    session = ProfileSession(settings, profiler, registry={spec.name: spec}, out=out)
    assert session.run() == 0

    folder = next(tmp_path.glob("*-profile"))
    (record,) = [json.loads(line) for line in (folder / "profile.jsonl").read_text().splitlines()]
    assert record["server"] == "fake-floor" and record["python_frames"] == "py-spy"
    assert set(record["windows"]) == {"unprofiled", "perf", "py-spy"}
    assert record["windows"]["perf"]["client"]["requests"] > 0
    profile = record["profile"]
    assert profile["samples"] > 50
    # perf's samples add up to the CPU the sampler measured over the same window
    assert 0.7 < profile["sampled_vs_measured_cpu"] < 1.3
    assert profile["named_share"] >= 0.9
    assert profile["pyspy"]["running_python"] > 0
    assert record["overhead"]["perf"]["rps_unprofiled"] > 0
    assert (folder / record["flamegraphs"]["perf_folded"]).stat().st_size > 0
    if tools.inferno_binary():
        assert (folder / record["flamegraphs"]["perf_svg"]).read_text().startswith("<?xml")
    assert not list((folder / "perf").glob("*.perf.data"))          # not kept by default
    report = (folder / "profile.md").read_text()
    assert "| fake-floor | py-spy |" in report
    env = json.loads((folder / "env.json").read_text())
    assert env["kind"] == "profile" and env["complete"] is True
    assert "[1/1] fake-floor items=10 c=4" in out.getvalue()
