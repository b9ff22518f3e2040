"""Running a policy's handler under a deadline, so a buggy policy never
leaves an OOM waiting.

The handler runs on a worker thread; the engine waits at most the deadline
of the policy's own time: what oomkit spends for it (reading the context from
``/proc`` and cgroupfs, carrying out its release actions; see
:class:`oomkit.context.IOMeter`) is added to the deadline, up to ``io_cap``,
so a large cgroup tree on a slow ``/proc`` does not fail a sound policy.
While it waits, the engine calls ``tick`` (the watchdog's heartbeat) every
``tick_every`` seconds.
A handler still running then is abandoned: its actions are revoked by the
caller, and ``HandlerDeadline`` is raised inside its thread
(``PyThreadState_SetAsyncExc``) so a pure-Python loop stops at its next
bytecode; one blocked in a system call stops when the call returns.  The
next handler gets a fresh worker.

A deterministic budget is offered too (used by the simulator): a count of
Python lines the handler may execute, enforced with ``sys.settrace`` on the
worker, so the same scenario always fails the same handler at the same spot.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oomkit.context import IOMeter, set_meter


class HandlerDeadline(Exception):
    """Raised inside a handler that ran past its deadline or budget."""


class RemoteError(Exception):
    """A failure reported by (or about) a policy's worker process, already
    worded for the record (``RuntimeError: boom``, as in process)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    elapsed: float = 0.0
    io: float = 0.0          # of ``elapsed``, the time oomkit spent for the handler
    note: str = ""           # a worker's: what its time went to (said with a missed deadline)


class _Worker(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="oomkit-handler", daemon=True)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = False

    def run(self) -> None:
        try:
            while not self.abandoned:
                job = self.jobs.get()
                if job is None:         # Guard.close(): the engine that owned us is gone
                    return
                fn, budget, done, meter = job
                outcome = Outcome()
                set_meter(meter)
                try:
                    outcome.value = call_with_budget(fn, budget) if budget else fn()
                except BaseException as exc:  # noqa: BLE001 - a policy may raise anything
                    outcome.error = exc
                finally:
                    set_meter(None)
                done.put(outcome)
        except HandlerDeadline:
            pass  # abandoned: the asynchronous stop arrived between jobs


def call_with_budget(fn: Callable[[], Any], budget: int, skip: str | None = None) -> Any:
    """``fn()``, stopped by HandlerDeadline after ``budget`` Python lines; frames
    of the modules named ``skip...`` are not traced (they neither count nor stop:
    a policy worker's pipe must never be left half-read)."""
    left = [budget]

    def count(frame, event, arg):
        if event == "line":
            left[0] -= 1
            if left[0] < 0:
                raise HandlerDeadline(f"handler ran past its budget of {budget} lines")
        return count

    def enter(frame, event, arg):       # each new frame's "call" event
        if skip and frame.f_globals.get("__name__", "").startswith(skip):
            return None
        return count(frame, event, arg)

    sys.settrace(enter)
    try:
        return fn()
    finally:
        sys.settrace(None)


class Guard:
    """Calls handlers on a worker thread with a wall-time deadline."""

    def __init__(self, deadline: float, line_budget: int | None = None, *, io_cap: float = 1.0,
                 tick: Callable[[], None] | None = None, tick_every: float = 0.25):
        self.deadline, self.line_budget, self.io_cap = deadline, line_budget, io_cap
        self.tick, self.tick_every = tick, tick_every
        self._worker: _Worker | None = None

    def call(self, fn: Callable[[], Any], on_timeout: Callable[[], None] = lambda: None) -> Outcome:
        worker = self._worker
        if worker is None or not worker.is_alive():
            worker = self._worker = _Worker()
            worker.start()
        done: queue.SimpleQueue = queue.SimpleQueue()
        meter = IOMeter()
        start = time.perf_counter()
        worker.jobs.put((fn, self.line_budget, done, meter))
        outcome = self._wait(done, meter, start)
        if outcome is None:
            on_timeout()
            self._abandon(worker)
            outcome = Outcome(timed_out=True)
        outcome.elapsed = time.perf_counter() - start
        outcome.io = meter.now()
        return outcome

    def close(self) -> None:
        """Let the idle worker end (an engine replaced on reload must not leave its
        worker blocked on its queue for ever: one thread per reload)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.jobs.put(None)

    def _wait(self, done: queue.SimpleQueue, meter: IOMeter, start: float) -> Outcome | None:
        """The handler's outcome, or None once its own time passed the deadline."""
        while True:
            allowed = self.deadline + min(meter.now(), self.io_cap)
            left = allowed - (time.perf_counter() - start)
            if left <= 0:
                return None
            wait = min(left, self.tick_every) if self.tick else left
            try:
                return done.get(timeout=wait)
            except queue.Empty:
                if self.tick:
                    self.tick()

    def _abandon(self, worker: _Worker) -> None:
        self._worker = None
        worker.abandoned = True
        import ctypes  # only for an abandoned handler: it costs the daemon's RSS otherwise

        if worker.ident is None:        # never started: nothing runs to be stopped
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                                   ctypes.py_object(HandlerDeadline))
