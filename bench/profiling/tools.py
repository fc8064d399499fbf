"""The profilers: finding them, checking that this machine lets them record, their command lines, and
starting and stopping them around a measured window.

Why this combination (docs/profiles.md says more):
- `perf record -e cpu-clock -c PERIOD` samples every thread of the server's process tree once per
  PERIOD nanoseconds of its own CPU time, in user and kernel mode alike: the samples add up to the
  CPU the harness measures, so a share of samples is a share of server CPU. The software clock works
  on VMs without hardware counters.
- `--call-graph dwarf`: neither CPython (built without frame pointers) nor a Rust release build keep
  frame pointers, so `-g` (frame pointers) loses the callers of most user-space samples; perf copies
  the top of the user stack with every sample and unwinds it from the binaries' .eh_frame instead.
  Kernel stacks come from the kernel either way.
- CPython < 3.12 gives perf no Python function names (every Python function is the same
  `_PyEval_EvalFrameDefault`), so py-spy (`--native`, which keeps C extension frames so that only
  samples running Python code are used) runs beside perf and names the Python code those samples
  ran (`--gil`: only samples of threads holding the GIL, the only ones that can run Python code).
  CPython 3.12+ is started with `-X perf` instead: its trampolines put each Python function in
  perf's own stacks, and py-spy is not needed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Supervisor, Usage

PERF_FIELDS = "comm,pid,tid,time,period,event,ip,sym,dso"
MMAP_PAGES = 1024    # 4 MiB ring buffer per CPU: DWARF samples are ~8 KiB, 1k per busy core a second
PARANOID = Path("/proc/sys/kernel/perf_event_paranoid")
PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")


class ProfilerUnavailable(RuntimeError):
    """This machine cannot record the profile; the message is the one line the user sees."""


@dataclass(frozen=True)
class ProfilerConfig:
    period_ns: int = 1_000_000        # one sample per ms of a thread's CPU: 1 kHz per busy core
    dwarf_stack_bytes: int = 8192     # user stack copied per sample for DWARF unwinding
    pyspy_rate_hz: int = 200          # its own window: only proportions are used, so more samples

    def as_json(self) -> dict:
        return {"perf_event": "cpu-clock", "perf_period_ns": self.period_ns,
                "perf_rate_hz_per_busy_core": round(1e9 / self.period_ns),
                "call_graph": f"dwarf,{self.dwarf_stack_bytes}", "clock": "CLOCK_MONOTONIC",
                "pyspy_rate_hz": self.pyspy_rate_hz}


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def perf_binary() -> str | None:
    return shutil.which("perf")


def pyspy_binary() -> str | None:
    """py-spy as the project installs it (next to the venv's python), else from PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def inferno_binary() -> str | None:
    found = shutil.which("inferno-flamegraph")
    if found:
        return found
    cargo = Path.home() / ".cargo" / "bin" / "inferno-flamegraph"
    return str(cargo) if cargo.exists() else None


def inferno_version(inferno: str | None) -> str | None:
    """inferno has no --version: read what `cargo install` recorded."""
    if inferno is None:
        return None
    try:
        import json
        installs = json.loads((Path.home() / ".cargo" / ".crates2.json").read_text())["installs"]
    except (OSError, ValueError, KeyError):
        return "inferno (version unknown)"
    for key in installs:
        if key.startswith("inferno "):
            return " ".join(key.split()[:2])
    return "inferno (version unknown)"


def check_perf(perf: str | None = None) -> str:
    """The perf binary, once a one-second probe recorded kernel and user stacks; else
    ProfilerUnavailable with one line saying why."""
    perf = perf or perf_binary()
    if perf is None:
        raise ProfilerUnavailable("perf is not installed (Debian: apt-get install linux-perf); "
                                  "profiling needs it")
    paranoid = read_int(PARANOID)
    if os.geteuid() != 0 and paranoid is not None and paranoid > 1:
        raise ProfilerUnavailable(f"profiling is not permitted: kernel.perf_event_paranoid is "
                                  f"{paranoid} (kernel stacks need <= 1, or root)")
    with tempfile.TemporaryDirectory(prefix="rankbench-perf-probe-") as tmp:
        argv = [perf, "record", "-q", "-e", "cpu-clock", "-c", "1000000", "--call-graph",
                "dwarf,1024", "-k", "CLOCK_MONOTONIC", "-N", "-B", "-o", str(Path(tmp) / "probe.data"),
                "--", sys.executable, "-c", "pass"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProfilerUnavailable(f"profiling is not permitted: perf did not run ({exc})") from None
    if result.returncode != 0:
        raise ProfilerUnavailable(f"profiling is not permitted: `perf record` failed "
                                  f"({_first_reason(result.stderr)}; perf_event_paranoid="
                                  f"{paranoid if paranoid is not None else 'unknown'})")
    return perf


def check_pyspy() -> str:
    pyspy = pyspy_binary()
    if pyspy is None:
        raise ProfilerUnavailable("py-spy is not installed (it names Python frames on CPython < "
                                  "3.12): run `make setup`, which installs it into .venv")
    scope = read_int(PTRACE_SCOPE)
    if scope is not None and (scope >= 3 or (scope >= 2 and os.geteuid() != 0)):
        raise ProfilerUnavailable(f"profiling is not permitted: py-spy cannot attach "
                                  f"(kernel.yama.ptrace_scope is {scope})")
    return pyspy


def _first_reason(stderr: str) -> str:
    for line in stderr.splitlines():
        text = line.strip()
        if text and text.rstrip(":").lower() not in ("error", "warning"):
            return text[:160]
    return "no message"


def version(binary: str | None, flag: str = "--version") -> str | None:
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, flag], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def python_mode(interpreter: str | None) -> str:
    """How Python frames get their names for a server of this interpreter facet: "native" (no
    Python), "perf-trampoline" (CPython >= 3.12, `-X perf`) or "py-spy" (older CPython)."""
    if not interpreter:
        return "native"
    try:
        major, minor = (int(x) for x in interpreter.rsplit("-", 1)[-1].split(".")[:2])
    except ValueError:
        return "py-spy"
    return "perf-trampoline" if (major, minor) >= (3, 12) else "py-spy"


def with_perf_trampoline(argv: list[str]) -> list[str]:
    """`python -m ...` -> `python -X perf -m ...` (after a taskset prefix, if any)."""
    for index, arg in enumerate(argv):
        if Path(arg).name.startswith("python"):
            return argv[:index + 1] + ["-X", "perf"] + argv[index + 1:]
    return argv


def perf_record_command(perf: str, pids: list[int], out: Path, config: ProfilerConfig) -> list[str]:
    return [perf, "record", "-q", "-e", "cpu-clock", "-c", str(config.period_ns),
            "--call-graph", f"dwarf,{config.dwarf_stack_bytes}", "-k", "CLOCK_MONOTONIC",
            "-m", str(MMAP_PAGES), "-N", "-B", "-p", ",".join(map(str, pids)), "-o", str(out)]


def pyspy_record_command(pyspy: str, pid: int, out: Path, config: ProfilerConfig) -> list[str]:
    # --gil: only threads holding the GIL, i.e. running Python code or C code called from it. A
    # thread waiting on a lock or a queue (FastAPI's thread pool) can look busy to py-spy's idle
    # test, and its Python frames would then take a share of the split they never used.
    return [pyspy, "record", "--pid", str(pid), "--native", "--gil", "--subprocesses",
            "--rate", str(config.pyspy_rate_hz), "--format", "raw", "--output", str(out)]


def perf_script_command(perf: str, data: Path) -> list[str]:
    return [perf, "script", "-i", str(data), "--no-inline", "--show-lost-events", "-F", PERF_FIELDS]


@dataclass
class Recorder:
    """One profiler process recording a window; stopped with SIGINT so that it writes its file."""
    name: str
    argv: list[str]
    output: Path
    log: Path
    ready_text: str | None = None     # what the profiler prints once it samples
    proc: subprocess.Popen | None = None
    usage: Usage | None = None
    started_at: float = field(default=0.0)

    def start(self, supervisor: Supervisor, timeout_s: float = 20.0) -> None:
        self.proc = supervisor.start(self.argv, self.name, self.log, self.log)
        self.started_at = time.monotonic()
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProfilerUnavailable(f"{self.name} exited with code {self.proc.returncode} "
                                          f"at start: {_first_reason(_tail(self.log))}")
            if self.ready_text is None or self.ready_text in _tail(self.log):
                return
            time.sleep(0.05)
        raise ProfilerUnavailable(f"{self.name} did not start sampling within {timeout_s:.0f} s")

    def stop(self, supervisor: Supervisor, timeout_s: float = 120.0) -> Usage:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        self.usage = supervisor.wait_measured(self.proc, timeout_s=timeout_s)
        if not self.output.exists() or self.output.stat().st_size == 0:
            raise ProfilerUnavailable(f"{self.name} wrote no {self.output.name} (exit code "
                                      f"{self.proc.returncode}): {_first_reason(_tail(self.log))}")
        return self.usage


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def perf_script(perf: str, data: Path):
    """A running `perf script` over `data`: iterate over `.stdout` lines, then `.wait()`."""
    return subprocess.Popen(perf_script_command(perf, data), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, errors="replace")


def flamegraph(inferno: str, folded: Path, svg: Path, title: str, unit: str) -> bool:
    """An SVG flame graph from collapsed stacks with inferno; False when inferno failed."""
    with open(folded) as source, open(svg, "w") as target:
        result = subprocess.run([inferno, "--title", title, "--countname", unit,
                                 "--minwidth", "0.05"], stdin=source, stdout=target,
                                stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        svg.unlink(missing_ok=True)
        return False
    return True
