"""Statistics primitives: a figure over repeats with its spread, and how two figures are told apart.

A figure over repeats is a `Stat`: the value the report prints, the per-repeat values behind it
(aligned with the repeats they come from) and how the value was obtained. Two figures whose min-max
ranges over repeats overlap are not significantly different, and no winner is declared between them.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Stat:
    """A figure over repeats. `value` is what the report prints; `values` are the per-repeat
    figures that give its spread (in the order of `repeats` when known); `how` says how `value`
    was obtained."""

    value: float
    values: tuple[float, ...]
    how: str  # "median" | "pooled" | "merged" | "median-of-runs" | "max" | "ratio" | "difference"
    repeats: tuple[int, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of the per-repeat values (sample stdev / mean)."""
        if self.n < 2:
            return None
        mean = statistics.fmean(self.values)
        return statistics.stdev(self.values) / mean if mean else None

    @property
    def deviation(self) -> float | None:
        """Largest relative distance of a repeat from the reported value (the printed "±")."""
        if self.n < 2 or not self.value:
            return None
        return max(abs(v - self.value) for v in self.values) / abs(self.value)

    def by_repeat(self) -> dict[int, float] | None:
        if self.repeats is None or len(self.repeats) != len(self.values):
            return None
        return dict(zip(self.repeats, self.values))

    def overlaps(self, other: "Stat") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def scaled(self, factor: float) -> "Stat":
        return replace(self, value=self.value * factor,
                       values=tuple(v * factor for v in self.values))


def median_stat(values: Iterable[float | None],
                repeats: Sequence[int] | None = None) -> Stat | None:
    """The median over repeats; None when any repeat lacks the figure (never a partial median)."""
    values = tuple(values)
    if not values or any(v is None for v in values):
        return None
    return Stat(statistics.median(values), values, "median",
                tuple(repeats) if repeats is not None else None)


def pooled(pairs: Sequence[tuple[float | None, float]],
           repeats: Sequence[int] | None = None) -> Stat | None:
    """Weighted mean over repeats of (value, weight) pairs: the mean over every request of every
    repeat. None when any repeat lacks the value or nothing weighs."""
    if not pairs or any(v is None for v, _ in pairs):
        return None
    total = sum(w for _, w in pairs)
    if not total:
        return None
    return Stat(sum(v * w for v, w in pairs) / total, tuple(v for v, _ in pairs), "pooled",
                tuple(repeats) if repeats is not None else None)


def combine(terms: Sequence[tuple[float, Stat]], how: str = "difference") -> Stat | None:
    """sum(sign * stat) for stats of the same repeats: the value from the printed values, the
    spread from each repeat's own combination (repeats of one round share the machine's state).
    Without common repeats the spread is the value alone (unknown)."""
    value = sum(sign * stat.value for sign, stat in terms)
    maps = [stat.by_repeat() for _, stat in terms]
    common = (sorted(set.intersection(*(set(m) for m in maps)))
              if maps and all(m is not None for m in maps) else [])
    if not common:
        return Stat(value, (value,), how)
    per_repeat = tuple(sum(sign * m[r] for (sign, _), m in zip(terms, maps)) for r in common)
    return Stat(value, per_repeat, how, tuple(common))


def ratio_stat(numerator: Stat, denominator: Stat) -> Stat | None:
    """numerator / denominator with the spread of same-repeat ratios (one round of the run order)."""
    if not denominator.value:
        return None
    value = numerator.value / denominator.value
    a, b = numerator.by_repeat(), denominator.by_repeat()
    common = sorted(set(a) & set(b)) if a is not None and b is not None else []
    paired = tuple(a[r] / b[r] for r in common if b[r])
    return Stat(value, paired or (value,), "ratio", tuple(common) if paired else None)


def significant(a: Stat | None, b: Stat | None) -> bool | None:
    """True when the min-max ranges over repeats do not overlap; None when it cannot be told."""
    if a is None or b is None or a.n < 2 or b.n < 2:
        return None
    return not a.overlaps(b)


@dataclass
class Verdict:
    text: str
    winner: str | None
    significant: bool | None


def choose_winner(entries: list[tuple[str, Stat | None]], higher_is_better: bool) -> Verdict:
    """The best server on one metric, unless the runner-up is within the run-to-run spread."""
    ranked = sorted(((name, stat) for name, stat in entries if stat is not None),
                    key=lambda e: e[1].value, reverse=higher_is_better)
    if not ranked:
        return Verdict("n/a", None, None)
    best_name, best = ranked[0]
    if len(ranked) == 1:
        return Verdict(best_name, best_name, None)
    runner_name, runner = ranked[1]
    if best.value == runner.value:
        tied = [name for name, stat in ranked if stat.value == best.value]
        return Verdict(f"tie ({' = '.join(tied)})", None, False)
    verdict = significant(best, runner)
    if verdict is None:
        return Verdict(f"{best_name} (single run: spread unknown)", best_name, None)
    if not verdict:
        tied = [name for name, stat in ranked if stat.overlaps(best)]
        return Verdict(f"not significant ({' ≈ '.join(tied)})", None, False)
    return Verdict(best_name, best_name, True)


__all__ = ["Stat", "Verdict", "choose_winner", "combine", "median_stat", "pooled", "ratio_stat",
           "significant"]
