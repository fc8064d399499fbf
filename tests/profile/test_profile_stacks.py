"""Parsing perf script and py-spy output, and folding stacks, on samples recorded from py-none and
candle (fixtures/perf-script.txt: 30 samples of py-none's python process and 22 of candle's
actix worker, as `perf script --no-inline -F comm,pid,tid,time,period,event,ip,sym,dso` printed
them; fixtures/pyspy-raw.txt: py-spy --native --format raw lines of py-none)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.profiling import rules, stacks
from bench.profiling.attribute import attribute

FIXTURES = Path(__file__).parent / "fixtures"


def perf_samples():
    with open(FIXTURES / "perf-script.txt") as handle:
        return list(stacks.parse_perf_script(handle))


def test_recorded_samples_are_all_read():
    samples = perf_samples()
    assert len(samples) == 52
    assert Counter((s.comm, s.pid, s.tid) for s in samples) == {
        ("python", 14853, 14853): 30, ("actix-rt|system", 26090, 26094): 22}
    assert {s.period_ns for s in samples} == {1_000_000}
    assert sum(len(s.frames) for s in samples) == 1231     # every frame line of the file


def test_first_sample_leaf_and_root():
    first = perf_samples()[0]
    assert first.time_s == 625.188604
    assert first.frames[0] == stacks.Frame("native", "deque_popleft",
                                           "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0")
    assert first.frames[-1].symbol == "_start" and len(first.frames) == 27


def test_kernel_frames_and_the_truncation_marker():
    samples = perf_samples()
    kernel = [f for s in samples for f in s.frames if f.kind == "kernel"]
    assert len(kernel) == 85 and all(f.dso == "[kernel.kallsyms]" for f in kernel)
    # perf's ffffffffffffffff marker (DWARF unwinding ran out of copied stack) is not the kernel.
    truncated = [s for s in samples if s.frames[-1].symbol == "[unknown]"]
    assert truncated and all(s.frames[-1].kind == "native" for s in truncated)


def test_header_and_frame_edge_cases():
    text = """\
tokio-runtime-w 12/13    1.500000:    250000 cpu-clock:
\t    7f00 onnxruntime::Foo::Run(onnxruntime::OpKernelContext*) const (/x/libonnxruntime.so.1.17)
\t    7f01 py::App._rank_task:/srv/py_servers/app.py (/tmp/perf-12.map)
\tffffffff81000130 entry_SYSCALL_64 ([kernel.kallsyms])

perf: some warning printed between samples
python 7/7    2.000000:    1000000 cpu-clock:
\t    10 _start (/usr/bin/python3.12)
"""
    samples = list(stacks.parse_perf_script(text.splitlines()))
    assert [s.comm for s in samples] == ["tokio-runtime-w", "python"]
    first = samples[0]
    assert first.period_ns == 250_000
    assert first.frames[0].symbol == "onnxruntime::Foo::Run(onnxruntime::OpKernelContext*) const"
    assert first.frames[0].dso == "/x/libonnxruntime.so.1.17"
    assert first.frames[1] == stacks.Frame("python", "App._rank_task", "/srv/py_servers/app.py")
    assert first.frames[2].kind == "kernel"


def test_fold_counts_microseconds_root_first():
    samples = perf_samples()
    folded = stacks.fold(samples)
    assert sum(folded.values()) == 52 * 1000
    python_stacks = [k for k in folded if k.startswith("python;")]
    assert python_stacks and all(k.split(";")[1].startswith("_start [python3.11]")
                                 for k in python_stacks if "[unknown]" not in k.split(";")[1])
    first = stacks.folded_stack(samples[0])
    assert first.endswith(";deque_popleft [libpython3.11.so.1.0]")


def test_folded_file_round_trip(tmp_path):
    folded = stacks.fold(perf_samples())
    path = tmp_path / "x.folded"
    stacks.write_folded(folded, path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(folded)
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == 52_000


def test_pyspy_raw_lines():
    with open(FIXTURES / "pyspy-raw.txt") as handle:
        parsed = list(stacks.parse_pyspy_raw(handle))
    assert len(parsed) == 18
    frames, count = parsed[0]
    assert count == 3
    assert frames[0] == stacks.Frame("native", "find_module_state_by_def", "recordobj.c")
    assert frames[-1] == stacks.Frame("native", "0x7f29d724524a", "libc.so.6")
    assert any(f == stacks.Frame("python", "_run_code", "<frozen runpy>") for f in frames)
    # running Python code vs native code, as the split uses them
    running = [rules.python_leaf(f) for f, _ in parsed]
    assert sum(v is None for v in running) == 2


def test_fixture_attribution_names_everything():
    with open(FIXTURES / "pyspy-raw.txt") as handle:
        pyspy = list(stacks.parse_pyspy_raw(handle))
    result = attribute(perf_samples(), pyspy)
    assert result.samples == 52
    assert result.named_share == 1.0
    assert result.pending == 3              # py-none samples that perf saw as the eval loop
    assert abs(sum(result.weights.values()) - 52) < 1e-9


def test_lost_events_are_counted_not_parsed_as_samples():
    text = """\
python3 23425/23425  2655.431430: PERF_RECORD_LOST lost 47
python3 23425/23425  2655.431430:      50000 cpu-clock:
\t    10 _start (/usr/bin/python3.11)

python3 23425/23425  2656.000000: PERF_RECORD_LOST_SAMPLES lost 3
"""
    lost: list = []
    samples = list(stacks.parse_perf_script(text.splitlines(), lost=lost))
    assert len(samples) == 1 and samples[0].period_ns == 50_000
    assert lost == [(2655.43143, 47), (2656.0, 3)]
