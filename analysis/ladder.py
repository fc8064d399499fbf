"""From the published stack to Candle (issue 13): the ladder study's rungs in the registry's order
(rankbench.servers.LADDER_RUNGS), each step's cost in server CPU per request and its goodput factor.

The CPU steps add up to the end-to-end difference and the goodput factors multiply to the
end-to-end ratio (both telescope over the rungs), so neither sum nor product is a check of anything;
what the steps say is how the whole divides: each step's share of the CPU difference and of the
logarithm of the goodput ratio. A rung missing from the results is skipped, and the step from the
rung before it to the next one present then changes more than one thing (its label says which).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rankbench.servers import (LADDER_BESIDE, LADDER_RUNGS, PUBLISHED_CONCURRENCY, PUBLISHED_RPS,
                               differing_facets, pair_sentence)

from analysis.comparisons import comparable, cpu_difference
from analysis.load import Config
from analysis.stats import Stat, ratio_stat
from analysis.summaries import ServerSummary, Summary


@dataclass
class Step:
    """From one rung to the next one present."""

    before: ServerSummary
    after: ServerSummary
    change: str                    # what the step changes (the registry's pair sentence)
    cpu_us: Stat | None            # server CPU µs/request, after - before (negative: saved)
    goodput_factor: Stat | None    # goodput after / before

    def cpu_share(self, total: Stat | None) -> float | None:
        """This step's part of the end-to-end CPU difference."""
        if self.cpu_us is None or total is None or not total.value:
            return None
        return self.cpu_us.value / total.value

    def goodput_share(self, total: Stat | None) -> float | None:
        """This step's part of the end-to-end goodput factor, on a log scale."""
        if (self.goodput_factor is None or total is None or total.value <= 0
                or self.goodput_factor.value <= 0 or total.value == 1):
            return None
        return math.log(self.goodput_factor.value) / math.log(total.value)


@dataclass
class Published:
    """The published study's ratio of Candle's requests/s to one of its stacks', and ours."""

    server: str
    published: float
    measured: Stat | None


@dataclass
class Ladder:
    config: Config
    rungs: list[ServerSummary]
    steps: list[Step]
    beside: list[tuple[ServerSummary, Step]]   # a server beside the first rung, and the step to it
    cpu_total: Stat | None                     # last - first, server CPU µs/request
    goodput_total: Stat | None                 # last / first
    published: list[Published]

    @property
    def study_shape(self) -> bool:
        """This configuration has the published study's load shape."""
        return self.config.concurrency == PUBLISHED_CONCURRENCY

    def largest_step(self) -> Step | None:
        """The step that moves goodput most (largest |log factor|)."""
        measured = [s for s in self.steps if s.goodput_factor and s.goodput_factor.value > 0]
        return max(measured, key=lambda s: abs(math.log(s.goodput_factor.value)), default=None)


def ladder(summary: Summary, config: Config) -> Ladder | None:
    """None unless the first rung (the published stack) and at least one other have a valid run
    in this configuration."""
    present = {c.server: c for c in summary.servers_in(config) if comparable(c)}
    rungs = [present[n] for n in LADDER_RUNGS if n in present]
    if len(rungs) < 2 or rungs[0].server != LADDER_RUNGS[0]:
        return None
    steps = [_step(a, b) for a, b in zip(rungs, rungs[1:])]
    beside = [(present[n], _step(rungs[0], present[n])) for n in LADDER_BESIDE if n in present]
    first, last = rungs[0], rungs[-1]
    published = [Published(name, PUBLISHED_RPS[last.server] / PUBLISHED_RPS[name],
                           ratio_stat(last.goodput, present[name].goodput))
                 for name in PUBLISHED_RPS
                 if name != last.server and name in present and last.server in PUBLISHED_RPS]
    return Ladder(config, rungs, steps, beside, cpu_difference(last, first),
                  ratio_stat(last.goodput, first.goodput), published)


def _step(before: ServerSummary, after: ServerSummary) -> Step:
    fa, fb = before.facts.facets, after.facts.facets
    change = pair_sentence(fa, fb)
    if change is None:
        change = f"changes several facets ({', '.join(differing_facets(fa, fb))})"
    if after.facts.notes:
        change += f" ({after.server}: {after.facts.notes})"
    return Step(before, after, change, cpu_difference(after, before),
                ratio_stat(after.goodput, before.goodput))
