"""Stacks as the profilers print them, parsed into one frame model, and folded for flame graphs.

Two sources:
- `perf script -F comm,pid,tid,time,period,event,ip,sym,dso --no-inline`: one header line per
  sample (`comm pid/tid time: period event:`), then one line per frame, leaf first
  (`ip symbol (dso)`), then a blank line. On CPython 3.12+ started with `-X perf`, Python functions
  appear as trampoline frames named `py::qualname:/path/file.py`.
- `py-spy record --format raw` (collapsed stacks): one line per distinct stack, frames root first,
  `;`-separated, then a space and the count. A Python frame is `function (path/file.py:line)`, a
  native one (`--native`) `symbol (source.c:line)` or `0xaddress (library.so)`.

Every frame becomes a `Frame(kind, symbol, dso)`: kind is "kernel", "native" or "python"; for a
Python frame `symbol` is the function and `dso` its source file, so that the attribution rules
(rules.py) read both sources the same way.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

KERNEL_SPACE = 0xFFFF800000000000   # x86-64: addresses from here up belong to the kernel
TRUNCATED = 0xFFFFFFFFFFFFFFFF      # perf's marker where DWARF unwinding ran out of copied stack

_HEADER = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)\s+(?P<time>\d+\.\d+):\s+"
                     r"(?:(?P<period>\d+)\s+)?(?P<event>[\w:.-]+):?\s*$")
_FRAME = re.compile(r"^\s+(?P<ip>[0-9a-fA-F]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
_TRAMPOLINE = re.compile(r"^py::(?P<func>.+?):(?P<file>[^:]+)$")
_LOST = re.compile(r"\s(?P<time>\d+\.\d+):\s+PERF_RECORD_LOST(?:_SAMPLES)?\s+lost\s+(?P<n>\d+)")
_PYSPY_FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")
_LINE_SUFFIX = re.compile(r":\d+$")


@dataclass(frozen=True)
class Frame:
    kind: str      # "kernel" | "native" | "python"
    symbol: str    # function or symbol name ("[unknown]" when perf could not name it)
    dso: str       # shared object or executable; for Python frames the source file

    def label(self) -> str:
        """How the frame is shown in flame graphs and in the top lists of the report."""
        if self.kind == "python":
            return f"{self.symbol} ({self.dso})"
        if self.kind == "kernel":
            return f"{self.symbol} [k]"
        return f"{self.symbol} [{short_dso(self.dso)}]"


@dataclass
class Sample:
    """One perf sample: CPU time `period_ns` spent by thread `tid` of process `pid`."""
    pid: int
    tid: int
    comm: str
    time_s: float
    period_ns: int
    frames: list[Frame]       # leaf first


def short_dso(dso: str) -> str:
    """The file name of a shared object, without its directory."""
    return dso.rsplit("/", 1)[-1] if dso else dso


def _perf_frame(ip: str, symbol: str, dso: str) -> Frame:
    try:
        address = int(ip, 16)
    except ValueError:
        address = 0
    if address == TRUNCATED:
        return Frame("native", "[unknown]", "[unknown]")
    if dso.startswith("[kernel") or dso == "[vmlinux]" or address >= KERNEL_SPACE \
            and dso in ("[unknown]", ""):
        return Frame("kernel", symbol, dso)
    trampoline = _TRAMPOLINE.match(symbol)
    if trampoline:
        return Frame("python", trampoline.group("func"), trampoline.group("file"))
    return Frame("native", symbol, dso)


def parse_perf_script(lines: Iterable[str], event: str | None = None,
                      lost: list | None = None) -> Iterator[Sample]:
    """Samples from `perf script` text (see the module docstring for the fields it needs).
    Lines that are neither a header nor a frame (perf's warnings) are skipped; a sample whose
    header is malformed is dropped with its frames. `event` keeps only samples of that event.
    With `--show-lost-events`, perf says where its ring buffer overflowed: (time, samples lost)
    go to `lost` when a list is given."""
    current: Sample | None = None
    for raw in lines:
        line = raw.rstrip("\n")
        if lost is not None and "PERF_RECORD_LOST" in line:
            match = _LOST.search(line)
            if match:
                lost.append((float(match.group("time")), int(match.group("n"))))
            continue
        if not line.strip():
            if current is not None:
                yield current
                current = None
            continue
        if line[0] not in " \t":
            if current is not None:
                yield current
            match = _HEADER.match(line)
            if match is None or (event is not None and match.group("event") != event):
                current = None
                continue
            current = Sample(pid=int(match.group("pid")), tid=int(match.group("tid")),
                             comm=match.group("comm"), time_s=float(match.group("time")),
                             period_ns=int(match.group("period") or 0), frames=[])
            continue
        if current is None:
            continue
        match = _FRAME.match(line)
        if match is not None:
            current.frames.append(_perf_frame(match.group("ip"), match.group("sym"),
                                              match.group("dso")))
    if current is not None:
        yield current


def pyspy_frame(text: str) -> Frame:
    match = _PYSPY_FRAME.match(text.strip())
    if match is None:
        return Frame("native", text.strip(), "")
    name, where = match.group("name"), match.group("where")
    file = _LINE_SUFFIX.sub("", where)
    if file.endswith(".py") or file.startswith("<frozen"):
        return Frame("python", name, file)
    return Frame("native", name, file)


def parse_pyspy_raw(lines: Iterable[str]) -> Iterator[tuple[list[Frame], int]]:
    """(frames leaf first, count) per line of py-spy's raw (collapsed) output."""
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = [pyspy_frame(part) for part in stack.split(";") if part]
        frames.reverse()
        yield frames, n


def folded_stack(sample: Sample) -> str:
    """"comm;root frame;...;leaf frame": the thread's name is the root (several workers add up)."""
    return ";".join([sample.comm.replace(";", ","), *(_flame_name(f) for f in reversed(sample.frames))])


def folded_value(sample: Sample) -> int:
    """A sample's CPU in microseconds (flame graphs count integers)."""
    return max(1, round(sample.period_ns / 1000))


def fold(samples: Iterable[Sample]) -> Counter:
    """Collapsed stacks (stack -> sampled CPU in microseconds) for a flame graph."""
    folded: Counter = Counter()
    for sample in samples:
        folded[folded_stack(sample)] += folded_value(sample)
    return folded


def fold_pyspy(stacks: Iterable[tuple[list[Frame], int]]) -> Counter:
    folded: Counter = Counter()
    for frames, count in stacks:
        folded[";".join(_flame_name(f) for f in reversed(frames))] += count
    return folded


def _flame_name(frame: Frame) -> str:
    # `;` separates frames and a trailing number would be read as the count: keep both out.
    return frame.label().replace(";", ",")


def write_folded(folded: Counter, path) -> None:
    with open(path, "w") as handle:
        for stack, value in sorted(folded.items()):
            handle.write(f"{stack} {value}\n")
