"""From sampled stacks to CPU per category: perf's samples, completed by py-spy's Python names.

perf samples CPU time (one sample per fixed period of a thread's CPU clock, kernel and user), so
its sample counts are the measure. Each sample gets a category from rules.classify. On CPython
< 3.12, perf cannot name the Python function a sample of the eval loop was running: those samples
are PENDING, and they are split over categories in the proportions of py-spy's samples that were
running Python code in the same window (`rules.python_leaf`). The split is an estimate: py-spy
samples wall-clock time of running threads, perf CPU time, and the two sample different moments;
it is recorded as `estimated_share` beside each category so that the report can say how much of a
figure rests on it. Without py-spy samples the pending share stays `interpreter` (unresolved
Python code), with a note.

CPU per request of a category = its share of the samples x the server's CPU per request measured
by the harness's sampler (records.py takes the unprofiled window's: perf's own cost per sample is
charged to the server but seen by no sample).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from bench.profiling import rules
from bench.profiling.stacks import Frame, Sample

TOP = 6    # frames listed per category


@dataclass
class Attribution:
    samples: int = 0
    sampled_cpu_s: float = 0.0
    weights: Counter = field(default_factory=Counter)        # category -> samples (float)
    estimated: Counter = field(default_factory=Counter)      # part of weights from the split
    deciders: dict = field(default_factory=lambda: defaultdict(Counter))   # category -> label -> n
    layers: Counter = field(default_factory=Counter)          # kernel / libpython / native
    pending: int = 0
    unnamed_leaf: int = 0          # `other` samples whose leaf frame has no symbol
    lost: int = 0                  # samples perf could not write (ring buffer full)
    pyspy: dict | None = None
    notes: list[str] = field(default_factory=list)

    def share(self, category: str) -> float:
        total = sum(self.weights.values())
        return self.weights[category] / total if total else 0.0

    @property
    def named_share(self) -> float:
        total = sum(self.weights.values())
        return (total - self.weights[rules.OTHER]) / total if total else 0.0

    def as_record(self, server_cpu_us_per_req: float | None) -> dict:
        total = sum(self.weights.values())
        categories = {}
        for category in rules.CATEGORIES:
            weight = self.weights.get(category, 0.0)
            share = weight / total if total else 0.0
            deciders = self.deciders.get(category, Counter())
            decided = sum(deciders.values())
            categories[category] = {
                "label": rules.CATEGORIES[category],
                "samples": round(weight, 2),
                "share": round(share, 5),
                "cpu_us_per_req": (round(share * server_cpu_us_per_req, 2)
                                   if server_cpu_us_per_req is not None else None),
                "estimated_share": round(self.estimated.get(category, 0.0) / weight, 4) if weight else 0.0,
                "top": [[label, round(n / decided, 4)] for label, n in deciders.most_common(TOP)],
            }
        layer_total = sum(self.layers.values())
        return {
            "samples": self.samples,
            "sampled_cpu_s": round(self.sampled_cpu_s, 4),
            "named_share": round(self.named_share, 5),
            "pending_samples": self.pending,
            "lost_samples": self.lost,
            "categories": categories,
            "layers": {k: round(v / layer_total, 4) for k, v in self.layers.items()} if layer_total else {},
            "pyspy": self.pyspy,
            "notes": self.notes,
        }


_LIBPYTHON = re.compile(rules.LIBPYTHON)


def layer(frames: Sequence[Frame]) -> str:
    """Where the leaf ran: the kernel, the interpreter's own C code (libpython), or other native
    code (extensions, libraries, a Rust binary)."""
    if not frames:
        return "native"
    leaf = frames[0]
    if leaf.kind == "kernel":
        return "kernel"
    if leaf.kind == "python" or _LIBPYTHON.search(leaf.dso):
        return "libpython"
    return "native"


def decider_label(verdict: rules.Verdict, frames: Sequence[Frame]) -> str:
    if verdict.category == rules.KERNEL:
        return rules.kernel_detail(frames)
    if verdict.frame is not None:
        return verdict.frame.label()
    return frames[0].label() if frames else "(empty stack)"


def attribute(samples: Iterable[Sample], pyspy: Iterable[tuple[list[Frame], int]] | None = None,
              window: tuple[float, float] | None = None,
              rule_table: Sequence[rules.Rule] = rules.RULES) -> Attribution:
    """Attribute perf samples (only those inside `window`, in perf's clock, when given), then split
    the pending ones with py-spy's stacks."""
    result = Attribution()
    for sample in samples:
        if window is not None and not window[0] <= sample.time_s <= window[1]:
            continue
        result.samples += 1
        result.sampled_cpu_s += sample.period_ns / 1e9
        result.layers[layer(sample.frames)] += 1
        verdict = rules.classify(sample.frames, rule_table)
        if verdict.category == rules.OTHER and sample.frames and \
                sample.frames[0].kind == "native" and sample.frames[0].symbol == "[unknown]":
            result.unnamed_leaf += 1
        if verdict.category == rules.PENDING:
            result.pending += 1
            continue
        result.weights[verdict.category] += 1
        result.deciders[verdict.category][decider_label(verdict, sample.frames)] += 1

    split: Counter = Counter()
    labels: dict = defaultdict(Counter)
    if pyspy is not None:
        total = running_python = 0
        for frames, count in pyspy:
            total += count
            verdict = rules.python_leaf(frames, rule_table)
            if verdict is None:
                continue
            running_python += count
            split[verdict.category] += count
            label = verdict.frame.label() if verdict.frame else _first_python(frames)
            labels[verdict.category][label] += count
        result.pyspy = {"samples": total, "running_python": running_python,
                        "categories": {k: v for k, v in split.most_common()}}
    if result.pending:
        spread = sum(split.values())
        if spread:
            for category, count in split.items():
                weight = result.pending * count / spread
                result.weights[category] += weight
                result.estimated[category] += weight
                for label, n in labels[category].items():
                    result.deciders[category][label] += result.pending * n / spread
        else:
            result.weights[rules.INTERPRETER] += result.pending
            result.estimated[rules.INTERPRETER] += result.pending
            result.deciders[rules.INTERPRETER]["(Python code, unnamed: no py-spy samples)"] += result.pending
            result.notes.append(f"{result.pending} samples of Python code could not be named "
                                f"(no py-spy samples of running Python code): counted as interpreter")
    return result


def _first_python(frames: Sequence[Frame]) -> str:
    for frame in frames:
        if frame.kind == "python":
            return frame.label()
    return "(no Python frame)"
