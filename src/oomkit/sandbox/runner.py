"""The daemon's side of the policy sandbox: a worker process per attachment,
started through the zygote, called for each handler with a deadline enforced
from outside.

While a handler runs, the daemon answers the worker's requests: parts of the
context (read lazily from the daemon's own :class:`~oomkit.context.OOMContext`,
so the snapshot of what the policy read stays right) and release actions,
which go through the daemon's :class:`~oomkit.engine.actions.Actions` (scope,
``-1000``, protected pids, ceilings, revocation), so every byte counted as
released is the daemon's own measure.  Time spent answering is oomkit's, not
the policy's: it is added to the deadline up to ``io_cap``, as in process.

A worker that runs past its deadline is SIGKILLed through its pidfd and a new
one is started at once (the call is a failure); one that dies, or sends what
the protocol does not allow, is a failure too.  Nothing a worker does can
raise out of :meth:`WorkerRunner.call`.
"""

from __future__ import annotations

import array
import atexit
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import count, repeat
from typing import TYPE_CHECKING, Any

import msgspec

from oomkit.context import is_within
from oomkit.engine.attachment import Recipe
from oomkit.engine.guard import Outcome, RemoteError
from oomkit.errors import PolicyLoadError
from oomkit.policy import PressureEvent, PressureTrigger, Refused, Verdict
from oomkit.sandbox.channel import WORKER_MESSAGE_MAX, Channel, ChannelClosed, _ready

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.context import OOMContext, TaskInfo
    from oomkit.engine.actions import Actions
    from oomkit.engine.pressure import PressureCalls

log = logging.getLogger("oomkit")

#: How long a new worker may take to import and build its policy.
LOAD_TIMEOUT = 30.0
REASON_MAX = 1000
#: How long a call waits for a replaced worker to be ready (its policy rebuilt).
RESPAWN_WAIT = 2.0
#: With the CPU-time deadline (the simulator's), the most wall time beyond it.
CPU_CLOCK_WALL_CAP = 2.0
#: While a worker starts or loads on the loop's thread, the watchdog's heartbeat
#: goes on this often (its silence timeout: 1 s by default).
TICK_EVERY = 0.25
Tick = Callable[[], None] | None


@dataclass(frozen=True)
class Confinement:
    """Who a worker runs as and what it may use (``[daemon] policy_user``, ``policy_memory``)."""

    user: str = "nobody"
    memory: int | None = 256 << 20

    def ids(self) -> tuple[int, int]:
        import pwd

        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise PolicyLoadError(f"policy_user {self.user!r}: no such user") from None
        if entry.pw_uid == 0:
            raise PolicyLoadError(f"policy_user {self.user!r} is root: policies must run unprivileged")
        return entry.pw_uid, entry.pw_gid


class WorkerFailed(RemoteError):
    """The worker itself failed (died, timed out, broke the protocol, could not
    load): it is killed and replaced."""


class WorkerGone(Exception):
    """The worker died or broke the protocol: it is killed and replaced."""


# -- the zygote ---------------------------------------------------------------------

class Zygote:
    """One exec'ed ``oomkit.sandbox.zygote`` per process, shared by every engine."""

    _lock = threading.Lock()
    _instance: Zygote | None = None

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen([sys.executable, "-m", "oomkit.sandbox.zygote", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env,
                                     close_fds=True)
        theirs.close()
        self.sock = ours

    @classmethod
    def get(cls) -> Zygote:
        with cls._lock:
            z = cls._instance
            if z is None or z.proc.poll() is not None:
                z = cls._instance = Zygote()
            return z

    def spawn(self, request: dict[str, Any], worker_end: socket.socket, stdout: int,
              tick: Tick = None) -> tuple[int, int]:
        """Fork a worker; its pid and a pidfd for it.  The first waits for the
        zygote's start (an interpreter and oomkit's imports: seconds on a loaded
        machine), with ``tick`` (the watchdog's heartbeat) called meanwhile."""
        body = msgspec.msgpack.encode(request)
        fds = array.array("i", [worker_end.fileno(), stdout])
        with self._lock:
            self.sock.sendmsg([len(body).to_bytes(4, "big"), body],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            if tick is not None:
                while not _ready(self.sock.fileno(), select.POLLIN, TICK_EVERY):
                    tick()
            return self._reply()

    def _reply(self) -> tuple[int, int]:
        fds = array.array("i")
        header = b""
        while len(header) < 4:
            msg, anc, _f, _a = self.sock.recvmsg(4 - len(header), socket.CMSG_SPACE(fds.itemsize))
            if not msg:
                raise PolicyLoadError("the policy sandbox's zygote exited")
            header += msg
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
        size, body = int.from_bytes(header, "big"), b""
        while len(body) < size:
            chunk = self.sock.recv(size - len(body))
            if not chunk:
                raise PolicyLoadError("the policy sandbox's zygote exited")
            body += chunk
        (pid,) = msgspec.msgpack.decode(body)
        return pid, (fds[0] if fds else -1)

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@atexit.register
def _close_zygote() -> None:
    z = Zygote._instance
    if z is not None:
        Zygote._instance = None
        z.close()


# -- one worker ---------------------------------------------------------------------

class Worker:
    """One policy worker process and its pipe."""

    def __init__(self, recipe: Recipe, confinement: Confinement, label: str | None = None,
                 tick: Tick = None):
        self.recipe, self.confinement = recipe, confinement
        self.label = label          # the policy's name (a replacement keeps its predecessor's)
        self.ready = False
        self.missing: list[str] = []
        # Not root: the worker is this process's (effective) user from the start, so it
        # loads the policy with no more rights than oomkit would have in process.
        early = os.geteuid() != 0
        uid, gid = (os.geteuid(), os.getegid()) if early else confinement.ids()
        request = {"ref": recipe.ref, "params": recipe.params, "base_dir": recipe.base_dir,
                   "sys_path": list(sys.path), "uid": uid, "gid": gid, "memory": confinement.memory,
                   "early": early}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid, self.pidfd = Zygote.get().spawn(request, theirs, _stdout_fd(), tick)
        except OSError as exc:
            ours.close()
            raise PolicyLoadError(f"cannot start a policy worker: {exc}") from None
        except (OverflowError, msgspec.EncodeError) as exc:
            # params the worker's wire format cannot carry (an int past 64 bits)
            ours.close()
            raise PolicyLoadError(f"params cannot be passed to a policy worker: {exc}") from None
        finally:
            theirs.close()
        self.chan = Channel(ours, limit=WORKER_MESSAGE_MAX)
        # A worker forgotten with its engine (a simulation done) ends: EOF on its pipe.
        self._finalizer = weakref.finalize(self, _release, self.pidfd, ours)

    def wait_ready(self, until: float, tick: Tick = None) -> None:
        """Until the policy is built; PolicyLoadError if it could not be.  ``tick``
        (the watchdog's heartbeat, from the loop's thread only) is called meanwhile."""
        if self.ready:
            return
        try:
            while True:
                try:
                    msg = _recv(self.chan, min(until, time.monotonic() + TICK_EVERY) if tick else until)
                    break
                except TimeoutError:
                    if tick is None or time.monotonic() >= until:
                        raise
                    tick()
        except TimeoutError:
            self.kill()
            raise PolicyLoadError(f"policy {self.recipe.ref!r} was not loaded in time") from None
        except ChannelClosed:
            self.kill()
            raise PolicyLoadError(f"policy {self.recipe.ref!r}: its worker exited while loading it") from None
        if _shape(msg, "load_error", str):
            self.kill()
            raise PolicyLoadError(msg[1])
        if not (_shape(msg, "ready", str, list)):
            self.kill()
            raise PolicyLoadError(f"policy {self.recipe.ref!r}: its worker sent {str(msg)[:80]!r}")
        self.ready, self.label, self.missing = True, msg[1][:200], [str(m) for m in msg[2]][:10]
        for why in self.missing:
            log.info("oomkit: policy %s runs in a worker with less confinement: %s", self.label, why)

    def kill(self) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass    # it exited already
        self._finalizer()
        self.pidfd = -1


    def cpu(self) -> float:
        """The worker's CPU time so far (all its threads), from its process CPU
        clock (clock_getcpuclockid(3): ``~pid << 3 | CPUCLOCK_SCHED``)."""
        try:
            return time.clock_gettime((~self.pid << 3) | 2)
        except OSError:
            return float("inf")     # gone: the pipe says so next


def _release(pidfd: int, sock: socket.socket) -> None:
    if pidfd >= 0:
        os.close(pidfd)
    sock.close()


def _recv(chan: Channel, until: float) -> Any:
    """The worker's next message; what its policy printed is printed on the way."""
    while True:
        msg = chan.recv(until)
        if not _shape(msg, "output", str, str):
            return msg
        for text, stream in ((msg[1], sys.stdout), (msg[2], sys.stderr)):
            if text:
                try:
                    stream.write(text)
                    stream.flush()
                except (OSError, ValueError) as exc:
                    log.debug("oomkit: a policy's output was lost: %s", exc)


def _stdout_fd() -> int:
    """Where a policy's print() goes: this process's stdout as Python sees it now
    (``simulate --json`` sends it to stderr)."""
    try:
        sys.stdout.flush()
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return 2


def _shape(msg: Any, kind: str, *types: type) -> bool:
    return (isinstance(msg, list) and len(msg) == 1 + len(types) and msg[0] == kind
            and all(isinstance(v, t) and not isinstance(v, bool) or (t is bool and isinstance(v, bool))
                    for v, t in zip(msg[1:], types, strict=True)))


# -- the runner ---------------------------------------------------------------------

class WorkerRunner:
    """Runs each attachment's policy in its own worker process."""

    name = "worker"

    def __init__(self, deadline: float, line_budget: int | None = None, *, io_cap: float = 1.0,
                 tick: Callable[[], None] | None = None, tick_every: float = 0.25,
                 confinement: Confinement | None = None, clock: str = "wall"):
        self.deadline, self.line_budget, self.io_cap = deadline, line_budget, io_cap
        self.clock = clock
        self.tick, self.tick_every = tick, tick_every
        self.confinement = confinement or Confinement()
        #: Workers built beforehand (a reload's, on its thread): taken by start().
        self.spares: list[Worker] = []

    def start(self, recipe: Recipe) -> Worker:
        for i, spare in enumerate(self.spares):
            if spare.recipe == recipe and spare.confinement == self.confinement and spare.ready:
                return self.spares.pop(i)
        worker = Worker(recipe, self.confinement, tick=self.tick)
        worker.wait_ready(time.monotonic() + LOAD_TIMEOUT, self.tick)
        return worker

    def drop_spares(self) -> None:
        """The spares no attachment took end."""
        for spare in self.spares:
            spare.kill()
        self.spares = []

    def handle(self, worker: Worker, oc: OOMContext, k: Actions) -> tuple[Outcome, Worker]:
        header = {"level": str(oc.level), "memcg": oc.memcg, "attached_to": oc.attached_to,
                  "nodes": list(oc.nodes), "requested": oc.requested, "totalpages": oc.totalpages,
                  "budget": self.line_budget, **read_already(oc)}
        return self._call(worker, ["call", header], _Server(oc, k), k.revoke)

    def offline(self, worker: Worker, path: str) -> tuple[Outcome, Worker]:
        return self._call(worker, ["offline", path], None, lambda why: None)

    def triggers(self, worker: Worker) -> tuple[Outcome, Worker]:
        """The policy's ``psi_triggers()``: rows checked here, one
        :class:`PressureTrigger` each (a bad row stays text, refused by the engine)."""
        outcome, worker = self._call(worker, ["triggers"], None, lambda why: None)
        if outcome.error is None and not outcome.timed_out:
            rows = outcome.value if isinstance(outcome.value, list) else []
            outcome.value = [_trigger(row) for row in rows[:TRIGGERS_MAX]]
        return outcome, worker

    def psi_event(self, worker: Worker, event: PressureEvent, k: PressureCalls) -> tuple[Outcome, Worker]:
        t = event.trigger
        message = ["psi", [t.cgroup, t.kind, t.threshold, t.window], event.at, event.some, event.full]
        return self._call(worker, message, _PressureServer(k), k.revoke)

    def online(self, worker: Worker, path: str) -> tuple[Outcome, Worker]:
        return self._call(worker, ["online", path], None, lambda why: None)

    def stop(self, worker: Worker) -> None:
        worker.kill()

    def _call(self, worker: Worker, message: list, server: _Server | _PressureServer | None,
              revoke: Callable[[str], None]) -> tuple[Outcome, Worker]:
        io = [0.0]
        outcome = Outcome()
        try:
            # A replacement still building its policy: oomkit's wait, not the policy's time.
            worker.wait_ready(time.monotonic() + max(self.deadline, RESPAWN_WAIT), self.tick)
        except PolicyLoadError as exc:
            return Outcome(error=WorkerFailed(f"worker: {exc}")), self._replace(worker)
        start = time.perf_counter()
        try:
            worker.chan.send(message)
            outcome = self._wait(worker, server, start, io)
        except (WorkerGone, ChannelClosed) as exc:
            outcome = Outcome(error=WorkerFailed(f"worker: {exc}"))
        # A MemoryError leaves the worker's heap suspect (a leak): it is replaced too.
        memory = isinstance(outcome.error, RemoteError) and outcome.error.text.startswith("MemoryError")
        if outcome.timed_out or isinstance(outcome.error, WorkerFailed) or memory:
            revoke("the handler's deadline passed" if outcome.timed_out else "the policy's worker failed")
            worker = self._replace(worker)
        outcome.elapsed = time.perf_counter() - start
        outcome.io = io[0]
        return outcome, worker

    def _replace(self, worker: Worker) -> Worker:
        """Kill ``worker`` and start another (it builds its policy while the daemon goes on)."""
        worker.kill()
        try:
            return Worker(worker.recipe, worker.confinement, worker.label, tick=self.tick)
        except PolicyLoadError as exc:
            log.warning("oomkit: %s", exc)
            return worker       # dead: the next call fails, and counts

    def _wait(self, worker: Worker, server: _Server | _PressureServer | None, start: float, io: list[float]) -> Outcome:
        next_tick = time.perf_counter() + self.tick_every
        cpu0 = worker.cpu() if self.clock == "cpu" else 0.0
        rq0 = _sched(worker.pid) if self.clock == "wall" else (0.0, 0.0)
        while True:
            allowed = self.deadline + min(io[0], self.io_cap)
            now = time.perf_counter()
            if self.clock == "cpu":
                # The simulator's: the policy's CPU time, so a loaded machine never
                # fails a policy (results stay the same run to run); a policy that
                # blocks instead of computing meets the wall cap.
                cpu_now = worker.cpu()
                # A worker gone (its CPU clock unreadable: inf) has no time to count:
                # its pipe says so at once; inf - inf would make every bound NaN.
                own = cpu_now - cpu0 if math.isfinite(cpu_now) and math.isfinite(cpu0) else 0.0
                if own >= self.deadline or now - start >= allowed + CPU_CLOCK_WALL_CAP:
                    return Outcome(timed_out=True)
                allowed = now - start + max(self.deadline - own, 0.002)
            elif now - start >= allowed:
                ran, waited = (a - b for a, b in zip(_sched(worker.pid), rq0, strict=True))
                state = _state(worker.pid)
                allowed = wall_allowance(self.deadline, self.io_cap, now - start, io[0], ran, waited,
                                         state.startswith("R"))
                if now - start >= allowed:
                    return Outcome(timed_out=True, note=f"{(now - start) * 1000:.0f} ms in all: the worker "
                                   f"ran {ran * 1000:.1f} ms, waited {waited * 1000:.1f} ms for a CPU, "
                                   f"state {state} at the end")
            until = start + allowed
            if self.tick:
                if now >= next_tick:
                    self.tick()
                    next_tick = now + self.tick_every
                until = min(until, next_tick)
            try:
                msg = _recv(worker.chan, time.monotonic() + (until - now))
            except TimeoutError:
                continue
            except ChannelClosed as exc:
                raise WorkerGone(f"the policy's worker died ({exc}): killed, exited, or over its memory cap") from None
            if isinstance(msg, list) and msg and msg[0] == "done":
                return _done(msg)
            if server is None or not (isinstance(msg, list) and len(msg) >= 2 and msg[0] == "req"):
                raise WorkerGone(f"a message out of protocol: {str(msg)[:80]!r}")
            t0 = time.perf_counter()
            try:
                answer = server.answer(msg[1:])
                worker.chan.send(answer)
            except (WorkerGone, ChannelClosed):
                raise
            except Exception as exc:  # noqa: BLE001 - oomkit's own error answering: the call fails, the daemon goes on
                log.warning("oomkit: answering policy %s's %s failed: %s: %s", worker.label, msg[1],
                            type(exc).__name__, exc)
                raise WorkerGone(f"oomkit could not answer {msg[1]}: {type(exc).__name__}: {exc}") from None
            io[0] += time.perf_counter() - t0


TRIGGERS_MAX = 1024        # PSI triggers one policy may ask for


def _trigger(row: Any) -> PressureTrigger | _Shown:
    """A worker's trigger row ``[cgroup, kind, threshold, window]``, or what it sent instead."""
    if isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and row[1] in ("some", "full") \
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row[2:]):
        return PressureTrigger(row[0], row[1], float(row[2]), float(row[3]))
    return _Shown(str(row)[:200])


#: How soon a worker found runnable at its deadline is looked at again.
RUNNABLE_RECHECK = 0.005


def wall_allowance(deadline: float, io_cap: float, elapsed: float, io: float, ran: float, waited: float,
                   runnable: bool) -> float:
    """How long (wall seconds since the call) a live worker may take: its
    ``deadline`` of its own time, plus what was not its own, up to ``io_cap``.

    Not its own: oomkit's time answering it (``io``) and the time the machine
    kept the worker, or this thread, waiting for a CPU (``waited``, run-queue
    delay from schedstat).  The kernel adds a wait to that counter only when
    the task next gets a CPU (``sched_info_arrive()``, kernel/sched/stats.h), so
    a wait still going on is not in it: a worker that has not run at all since
    the call, or one on a run queue now (``runnable``) that has used less than
    its deadline of CPU (``ran``), has not had its time yet.  On this 2-core
    machine at load ~40 a round trip to a worker took up to 306 ms, one to a
    forked C-speed echo child up to 1.6 s, both runnable all along (bench/RESULTS.md,
    issue 11): the scheduler's, not the policy's.
    """
    if ran <= 0:
        waited = elapsed
    allowed = deadline + min(io + waited, io_cap)
    if elapsed >= allowed and runnable and ran < deadline:
        allowed = min(elapsed + RUNNABLE_RECHECK, deadline + io_cap)
    return allowed


def _state(pid: int) -> str:
    """``pid``'s state letter from ``/proc/PID/stat`` (R: running or on a run
    queue) and, if it sleeps, where: the top of its kernel stack
    (``/proc/PID/stack``, root only; ``wchan`` reads 0 on recent kernels).
    What a missed deadline's record says; "?" for what cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3].decode("ascii", "replace")
    except (OSError, ValueError) as exc:
        log.debug("oomkit: /proc/%d/stat unread (%s): the worker is taken as not runnable", pid, exc)
        return "?"
    if state in ("R", ""):
        return state or "?"
    try:
        with open(f"/proc/{pid}/stack", "rb") as f:
            top = f.readline().decode("ascii", "replace").split()
    except OSError as exc:
        log.debug("oomkit: /proc/%d/stack unread (%s)", pid, exc)
        top = []
    return f"{state} in {top[-1].split('+')[0]}" if top else state


def _sched(pid: int) -> tuple[float, float]:
    """Seconds the worker ``pid`` has run, and that it and the calling thread have
    waited on a run queue (ready to run, not running), from ``/proc/PID/schedstat``
    (sum_exec_runtime, run_delay: kernel/sched/stats.h, CONFIG_SCHED_INFO); 0 for
    what cannot be read."""
    ran = waited = 0
    for path in (f"/proc/{pid}/schedstat", "/proc/thread-self/schedstat"):
        try:
            with open(path, "rb") as f:
                fields = f.read().split()
            waited += int(fields[1])
            ran += int(fields[0]) if path != "/proc/thread-self/schedstat" else 0
        except (OSError, IndexError, ValueError) as exc:
            log.debug("oomkit: %s unread (%s): no run-queue wait counted from it", path, exc)
    return ran / 1e9, waited / 1e9


def _done(msg: list) -> Outcome:
    if _shape(msg, "done", str, list) and msg[1] == "triggers":
        return Outcome(value=msg[2])
    if _shape(msg, "done", str, str):
        kind, text = msg[1], msg[2]
        if kind == "verdict" and text in Verdict.__members__:
            return Outcome(value=Verdict(text))
        if kind == "value":
            return Outcome(value=_Shown(text[:200]))
        if kind == "error":
            return Outcome(error=RemoteError(text[:2000]))
    raise WorkerGone(f"a bad answer: {str(msg)[:80]!r}")


class _Shown:
    """What a handler returned that was not a Verdict, as its repr (for the record)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def task_columns(tasks: Iterable[TaskInfo]) -> list:
    """``tasks`` as the worker takes them: one column per :class:`TaskInfo` field
    (``[pids, names, argvs, cgroups, ...]``; ``[]`` for none), built at C speed.
    The cgroup column is ``[paths, index per task]`` (a subtree's tasks share
    few paths: half the bytes at 10,000 tasks); an argv the live backend has
    not read (its lazy ``Cmdline``) crosses as None, and the worker asks for it
    on first use."""
    rows = tuple(tasks)
    if not rows:
        return []
    columns: list[Any] = list(zip(*rows, strict=True))
    argvs, cgroups = columns[2], columns[3]
    columns[2] = list(map(getattr, argvs, repeat("_argv"), argvs))   # Cmdline: its argv or None
    paths = dict(zip(dict.fromkeys(cgroups), count()))
    columns[3] = [list(paths), list(map(paths.__getitem__, cgroups))]
    return columns


def read_already(oc: OOMContext) -> dict[str, Any]:
    """The tasks the daemon's context holds read already (a standing decision's
    successors: the take's read), for the call's header: the worker then has them
    without a request, one round trip fewer (each costs a millisecond or more
    under emulation, where the daemon's loop waits on them).  Nothing is read
    for it: a context whose tasks nobody read sends none, and its policy asks."""
    tasks = oc.tasks.loaded(oc.attached_to)     # the attachment's subtree: every task of oc.tasks
    if tasks is not None:
        return {"tasks": task_columns(tasks)}
    if oc.memcg != oc.attached_to and is_within(oc.memcg, oc.attached_to):
        part = oc.tasks.loaded(oc.memcg)
        if part is not None:
            return {"subtree": [oc.memcg, task_columns(part)]}
    return {}


def _cgroup_row(c: Any) -> list:
    return [c.path, c.usage, c.limit, c.swap, c.oom_group, list(c.children), list(c.pids), dict(c.events)]


class _PressureServer:
    """Answers a ``handle_psi_event`` call's requests: ``declare_oom`` and ``now``."""

    def __init__(self, k: PressureCalls):
        self.k = k

    def answer(self, req: list) -> list:
        op, args = req[0], req[1:]
        if op == "now" and not args:
            return ["ok", self.k.now()]
        if op == "declare_oom" and len(args) == 2 and all(isinstance(a, str) for a in args):
            value = self.k.declare_oom(args[0], args[1][:REASON_MAX])
            if isinstance(value, Refused):
                return ["refused", int(value), value.reason]
            return ["ok", value]
        raise WorkerGone(f"a request out of protocol: {str(req)[:80]!r}")


class _Server:
    """Answers one handler call's requests from the daemon's context and actions."""

    def __init__(self, oc: OOMContext, k: Actions):
        self.oc, self.k = oc, k

    def answer(self, req: list) -> list:
        op, args = req[0], req[1:]
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None or not _args_ok(op, args):
            raise WorkerGone(f"a request out of protocol: {str(req)[:80]!r}")
        try:
            value = handler(self, *args)
        except KeyError:
            return ["ok", None]
        if isinstance(value, Refused):
            return ["refused", int(value), value.reason]
        return ["ok", value]

    def tasks(self) -> list:
        return task_columns(self.oc.tasks)

    def subtree(self, path: str) -> list:
        return task_columns(self.oc.tasks.in_cgroup(path))

    def cgroups(self) -> list:
        return list(self.oc.cgroups)

    def has(self, path: str) -> bool:
        return path in self.oc.cgroups

    def cgroup(self, path: str) -> list:
        return _cgroup_row(self.oc.cgroups[path])

    def cmdline(self, pid: int) -> list | None:
        task = self.oc.tasks.by_pid(pid)        # only a task of this attachment's view
        return list(task.cmdline) if task is not None else None

    def freed(self) -> int:
        return self.oc.memory_freed

    def in_flight(self) -> list:
        return list(self.oc.victims_in_flight)

    def kill_task(self, pid: int, reason: str) -> int:
        return self.k.kill_task(pid, reason[:REASON_MAX])

    def kill_cgroup(self, path: str, reason: str) -> int:
        return self.k.kill_cgroup(path, reason[:REASON_MAX])

    def raise_limit(self, path: str, new: int, reason: str) -> int:
        return self.k.raise_limit(path, new, reason[:REASON_MAX])

    def headroom(self, path: str) -> int:
        return self.k.headroom(path)

    def is_victim(self, pid: int) -> bool:
        return self.k.is_oom_victim(pid)

    def now(self) -> float:
        return self.k.now()


_OPS: dict[str, Callable[..., Any]] = {
    "tasks": _Server.tasks, "subtree": _Server.subtree, "cgroups": _Server.cgroups, "has": _Server.has,
    "cgroup": _Server.cgroup, "cmdline": _Server.cmdline, "freed": _Server.freed, "in_flight": _Server.in_flight,
    "kill_task": _Server.kill_task, "kill_cgroup": _Server.kill_cgroup, "raise_limit": _Server.raise_limit,
    "headroom": _Server.headroom, "is_victim": _Server.is_victim, "now": _Server.now,
}
_ARGS: dict[str, tuple[type, ...]] = {
    "tasks": (), "subtree": (str,), "cgroups": (), "has": (str,), "cgroup": (str,), "cmdline": (int,), "freed": (),
    "in_flight": (), "kill_task": (int, str), "kill_cgroup": (str, str), "raise_limit": (str, int, str),
    "headroom": (str,), "is_victim": (int,), "now": (),
}


def _args_ok(op: str, args: list) -> bool:
    types = _ARGS[op]
    return len(args) == len(types) and all(isinstance(a, t) and not isinstance(a, bool)
                                           for a, t in zip(args, types, strict=True))
