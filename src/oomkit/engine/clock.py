"""Injected clocks (as trio does): the engine asks its clock for the time and
to sleep, so the simulator and the tests control time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time, from CLOCK_MONOTONIC: immune to wall-clock jumps."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class ManualClock:
    """Simulated time: only moves when told to."""

    def __init__(self, start: float = 0.0):
        self._now = start

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance_to(self._now + max(0.0, seconds))

    def advance_to(self, t: float) -> None:
        if t > self._now:
            self._now = t
