"""Progress lines of a bench run: one per phase and per run, with an ETA that learns."""
from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """The ETA scales the plan's estimates by how long the finished runs actually took."""

    def __init__(self, out: TextIO, estimates: list[float]) -> None:
        self.out = out
        self.estimates = estimates
        self.started = time.monotonic()
        self.done_estimated = 0.0
        self.done_actual = 0.0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def eta(self, next_index: int) -> float:
        remaining = sum(self.estimates[next_index:])
        factor = self.done_actual / self.done_estimated if self.done_estimated > 0 else 1.0
        return remaining * factor

    def finished(self, index: int, seconds: float) -> None:
        self.done_estimated += self.estimates[index]
        self.done_actual += seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started
