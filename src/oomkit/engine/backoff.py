"""The backoff budget: how often one attachment may promise "memory will be
freed soon".  The review thread asked for "an atomic counter attached to the
bpf oom instance"; here it is a sliding window of promise times, one per
attachment, so a policy that keeps promising falls through to PASS."""

from __future__ import annotations

from collections import deque


class BackoffBudget:
    def __init__(self, promises: int = 3, window: float = 10.0):
        self.promises, self.window = promises, window
        self._taken: deque[float] = deque()

    def take(self, now: float) -> bool:
        """Spend one promise at ``now``; False when the window's budget is spent."""
        while self._taken and now - self._taken[0] >= self.window:
            self._taken.popleft()
        if len(self._taken) >= self.promises:
            return False
        self._taken.append(now)
        return True

    def remaining(self, now: float) -> int:
        return self.promises - sum(1 for t in self._taken if now - t < self.window)
