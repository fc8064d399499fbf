"""`python -m bench.profile` on a machine that does not permit profiling: one line, exit 1.

A fake `perf` first on PATH answers like perf does when perf_event_paranoid forbids it; no server,
database or load is started (the profiler is checked first)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profiling import settings as profile_settings
from bench.profiling import tools
from rankbench.config import ROOT

PERF_REFUSES = """#!/bin/sh
cat >&2 <<'EOF'
Error:
Access to performance monitoring and observability operations is limited.
Consider adjusting /proc/sys/kernel/perf_event_paranoid setting to open
access to performance monitoring and observability operations for processes
without CAP_PERFMON, CAP_SYS_PTRACE or CAP_SYS_ADMIN Linux capability.
EOF
exit 255
"""


def run_profile(path_dirs: list[Path], *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join(str(p) for p in path_dirs))
    env.pop("SERVERS", None)
    return subprocess.run([sys.executable, "-m", "bench.profile", "--no-report", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def fake_tool(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_perf_not_permitted_is_one_line(tmp_path):
    fake_tool(tmp_path / "bin", "perf", PERF_REFUSES)
    result = run_profile([tmp_path / "bin", *os.environ["PATH"].split(os.pathsep)],
                         "--results", str(tmp_path / "results"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("profile: profiling is not permitted: `perf record` failed "
                               "(Access to performance monitoring and observability operations "
                               "is limited.")
    assert "perf_event_paranoid=" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()       # nothing was started or written


def test_perf_missing_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_profile([tmp_path / "empty"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "profile: perf is not installed (Debian: apt-get install linux-perf); profiling needs it"]


def test_paranoid_kernel_refuses_unprivileged_users(monkeypatch):
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tools, "read_int", lambda path: 3)
    with pytest.raises(tools.ProfilerUnavailable) as caught:
        tools.check_perf("/bin/true")
    assert str(caught.value) == ("profiling is not permitted: kernel.perf_event_paranoid is 3 "
                                 "(kernel stacks need <= 1, or root)")


def test_bad_setting_is_one_line(tmp_path):
    result = run_profile([Path(sys.executable).parent, *os.environ["PATH"].split(os.pathsep)],
                         "--duration", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "profile: --duration: 0 is outside 1..86400"


def test_settings_read_the_bench_variables():
    settings, profiler, _ = profile_settings.resolve(
        [], {"SERVERS": "py-none,candle-no-model", "ITEMS": "100", "DURATION": "6s",
             "PERF_PERIOD_US": "500", "PYSPY_RATE": "50"})
    assert settings.servers == ("py-none", "candle-no-model")
    assert settings.items == (100,) and settings.duration_s == 6
    assert settings.concurrency == (32,) and settings.repeats == 1
    assert profiler.period_ns == 500_000 and profiler.pyspy_rate_hz == 50


def test_python_frames_by_interpreter_facet():
    assert tools.python_mode(None) == "native"
    assert tools.python_mode("cpython-3.11") == "py-spy"
    assert tools.python_mode("cpython-3.12") == "perf-trampoline"
    assert tools.with_perf_trampoline(["taskset", "-c", "0", "/v/bin/python", "-m", "x"]) == \
        ["taskset", "-c", "0", "/v/bin/python", "-X", "perf", "-m", "x"]
