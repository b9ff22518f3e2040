"""The policy worker: one process per attachment, where the policy's code runs.

Forked by the zygote (:mod:`oomkit.sandbox.zygote`), it confines itself
before any policy code runs, then builds the policy and answers the daemon:

1. rlimits: its address space (``RLIMIT_AS``: the memory cap), no core
   files, no file it could grow (``RLIMIT_FSIZE`` 0), few descriptors;
2. ``no_new_privs`` and the seccomp filter (:mod:`oomkit.sandbox.seccomp`):
   no signal to any process, no file opened for writing, no new program;
3. the policy is imported and built (still as the daemon's uid when that is
   root, so a root-only policy file can be read; the filter already holds);
4. when root: no supplementary groups, the unprivileged uid and gid (every
   capability goes with uid 0), not dumpable (no same-uid ptrace); the
   parent-death signal is set after that (a credential change clears it);
5. ``ready``, then one handler call per ``call`` message.

In a handler, ``oc`` is the ordinary read-only :class:`~oomkit.context.OOMContext`
whose lazy parts are read from the daemon on first use, and ``k`` sends
action *requests* that the daemon checks and carries out: it answers with
the bytes released (its own count) or a :class:`~oomkit.policy.Refused`.
"""

from __future__ import annotations

import functools
import gc
import os
import resource
import sys
from collections.abc import Sequence
from itertools import repeat
from typing import Any

from oomkit.context import CgroupInfo, LazyMapping, LazyTasks, OOMContext, TaskInfo
from oomkit.policy import PressureEvent, PressureTrigger, Refused, Verdict
from oomkit.sandbox.channel import Channel, ChannelClosed

PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4


class Remote:
    """The daemon at the other end of the pipe: one request, one answer."""

    def __init__(self, chan: Channel):
        self._chan = chan

    def ask(self, *request: Any) -> Any:
        self._chan.send(["req", *request])
        answer = self._chan.recv()
        if answer[0] == "refused":
            return Refused(answer[1], answer[2])
        return answer[1]


class RemoteArgv(Sequence):
    """A task's argv, asked of the daemon on first use (as the live backend reads
    ``/proc/PID/cmdline`` only when a policy looks)."""

    __slots__ = ("_remote", "_pid", "_argv")

    _argv: tuple | None

    def __init__(self, remote: Remote, pid: int):
        self._remote, self._pid, self._argv = remote, pid, None

    def _get(self) -> tuple:
        argv = self._argv
        if argv is None:
            argv = self._argv = tuple(self._remote.ask("cmdline", self._pid) or ())
        return argv

    def __getitem__(self, index):
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __eq__(self, other: object) -> bool:
        return self._get() == (tuple(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._get())


def tasks(remote: Remote, columns: list) -> list[TaskInfo]:
    """The daemon's task columns (:func:`oomkit.sandbox.runner.task_columns`) as
    TaskInfo rows; an argv sent as None is asked for on first use."""
    if not columns:
        return []
    pids, argvs, (paths, index), nodes = columns[0], columns[2], columns[3], columns[11]
    columns[2] = [RemoteArgv(remote, pid) if argv is None else tuple(argv)
                  for pid, argv in zip(pids, argvs, strict=True)]
    columns[3] = list(map(paths.__getitem__, index))
    if any(n is not None for n in nodes):
        columns[11] = [None if n is None else tuple(n) for n in nodes]
    # tuple.__new__ on the named tuple: each row built in C (its __new__ is Python).
    return list(map(tuple.__new__, repeat(TaskInfo), zip(*columns, strict=True)))


def ask_tasks(remote: Remote, *request: Any) -> list[TaskInfo]:
    """``tasks`` or ``subtree``, decoded and built with the collector off: the
    rows are acyclic, and it would only walk them (and every object inherited
    from the zygote) again and again while they are made: a third of the time
    at 10,000 tasks.  The policy's own code runs with it on."""
    return _built(remote, remote.ask(*request))


def _built(remote: Remote, columns: list) -> list[TaskInfo]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        return tasks(remote, columns)
    finally:
        if collecting:
            gc.enable()


def _cgroup(row: list | None) -> CgroupInfo:
    if row is None:
        raise KeyError
    return CgroupInfo(row[0], row[1], row[2], row[3], row[4], tuple(row[5]), tuple(row[6]), row[7])


class RemoteCgroups(LazyMapping[CgroupInfo]):
    """``oc.cgroups`` in the worker: a lookup is one request (the daemon answers
    None for a cgroup its context does not have: KeyError here), not a ``has``
    and then a read, two round trips; ``in`` still asks only ``has``."""

    __slots__ = ()

    def __getitem__(self, key: str) -> CgroupInfo:
        cache = self._cache
        if key in cache:
            return cache[key]
        if not isinstance(key, str):
            raise KeyError(key)
        value = cache[key] = self._load(key)
        return value


def context(remote: Remote, h: dict[str, Any]) -> OOMContext:
    """The handler's ``oc``: what the daemon sent, the rest read on first use."""
    def load(path: str) -> CgroupInfo:
        return _cgroup(remote.ask("cgroup", path))

    return OOMContext(
        level=h["level"], memcg=h["memcg"], attached_to=h["attached_to"], nodes=tuple(h["nodes"]),
        requested=h["requested"], totalpages=h["totalpages"],
        cgroups=RemoteCgroups(lambda: remote.ask("cgroups"), load, lambda p: remote.ask("has", p)),
        tasks=_context_tasks(remote, h),
        freed=lambda: remote.ask("freed"), in_flight=lambda: tuple(remote.ask("in_flight")))


def _context_tasks(remote: Remote, h: dict[str, Any]) -> LazyTasks:
    """``oc.tasks``: sent with the call if the daemon had read them already
    (:func:`oomkit.sandbox.runner.read_already`: every task, or the OOMing
    memcg's), else asked for on first use."""
    if "tasks" in h:
        return LazyTasks(_built(remote, h["tasks"]))      # in_cgroup() filters these, as the daemon's
    sent: dict[str, list[TaskInfo]] = {}
    if "subtree" in h:
        path, columns = h["subtree"]
        sent[path] = _built(remote, columns)

    def subtree(path: str) -> list[TaskInfo]:
        part = sent.pop(path, None)
        return part if part is not None else ask_tasks(remote, "subtree", path)

    return LazyTasks(lambda: ask_tasks(remote, "tasks"), subtree)


def _pid(task: Any) -> int:
    return task.pid if isinstance(task, TaskInfo) else int(task)


class WorkerActions:
    """``k`` in the worker: each action is a request the daemon judges."""

    def __init__(self, remote: Remote):
        self._remote = remote

    def kill_task(self, task: TaskInfo | int, reason: str = "") -> int:
        return self._remote.ask("kill_task", _pid(task), str(reason))

    def kill_cgroup(self, path: str, reason: str = "") -> int:
        return self._remote.ask("kill_cgroup", str(path), str(reason))

    def raise_limit(self, path: str, new_limit: int, reason: str = "") -> int:
        return self._remote.ask("raise_limit", str(path), int(new_limit), str(reason))

    def headroom(self, path: str) -> int:
        return self._remote.ask("headroom", str(path))

    def is_oom_victim(self, task: TaskInfo | int) -> bool:
        return self._remote.ask("is_victim", _pid(task))

    def now(self) -> float:
        return self._remote.ask("now")


class WorkerPressureActions:
    """``k`` of ``handle_psi_event`` in the worker: a declaration is a request the daemon judges."""

    def __init__(self, remote: Remote):
        self._remote = remote

    def declare_oom(self, cgroup: str, reason: str = "") -> int:
        return self._remote.ask("declare_oom", str(cgroup), str(reason))

    def now(self) -> float:
        return self._remote.ask("now")


def _triggers(policy: Any) -> list:
    """``psi_triggers()`` as rows the daemon checks: [cgroup, kind, threshold, window]."""
    try:
        out: list[Any] = []
        for t in policy.psi_triggers():
            if isinstance(t, PressureTrigger):
                out.append([str(t.cgroup), str(t.kind), float(t.threshold), float(t.window)])
            else:
                out.append(repr(t)[:200])
    except ChannelClosed:
        raise
    except BaseException as exc:  # noqa: BLE001 - a policy may raise anything
        return _error(exc)
    return ["done", "triggers", out]


def _psi(policy: Any, remote: Remote, msg: list) -> list:
    row, at, some, full = msg[1], msg[2], msg[3], msg[4]
    event = PressureEvent(PressureTrigger(row[0], row[1], row[2], row[3]), at, some, full)
    return _run(functools.partial(policy.handle_psi_event, event, WorkerPressureActions(remote)), None)


def _result(value: Any) -> list:
    if isinstance(value, Verdict):
        return ["done", "verdict", value.value]
    try:
        text = repr(value)
    except BaseException as exc:  # noqa: BLE001 - a hostile __repr__
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return ["done", "value", text[:200]]


def _error(exc: BaseException) -> list:
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        text = "<unprintable>"
    return ["done", "error", f"{type(exc).__name__}: {text}"[:2000]]


def _run(fn, budget: int | None) -> list:
    from oomkit.engine.guard import call_with_budget

    try:
        value = call_with_budget(fn, budget, skip="oomkit.sandbox") if budget else fn()
    except ChannelClosed:
        raise
    except BaseException as exc:  # noqa: BLE001 - a policy may raise anything
        return _error(exc)
    return _result(value)


def serve(chan: Channel, policy: Any) -> None:
    remote = Remote(chan)
    while True:
        msg = chan.recv()
        if msg[0] == "call":
            header = msg[1]
            oc, k = context(remote, header), WorkerActions(remote)
            reply = _run(functools.partial(policy.handle_out_of_memory, oc, k), header.get("budget"))
        elif msg[0] == "offline":
            reply = _run(functools.partial(policy.handle_cgroup_offline, msg[1]), None)
        elif msg[0] == "triggers":
            reply = _triggers(policy)
        elif msg[0] == "psi":
            reply = _psi(policy, remote, msg)
        elif msg[0] == "online":
            reply = _run(functools.partial(policy.handle_cgroup_online, msg[1]), None)
        else:
            return
        _flush(chan)
        chan.send(reply)


OUTPUT_MAX = 16 * 1024     # of a policy's print()s per call, per stream


class Capture:
    """The worker's sys.stdout and sys.stderr: what a policy prints goes to the
    daemon with its answer, which prints it where its own would go (``simulate
    --json`` sends it to stderr).  Bounded: the rest is dropped, with a note."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = self.dropped = 0
        #: While the policy loads: pass each write on at once (a slow import's
        #: messages appear when printed, not when it is done).
        self.eager: Channel | None = None

    def write(self, text: str) -> int:
        text = str(text)
        room = OUTPUT_MAX - self.size
        if len(text) > room:
            self.dropped += len(text) - max(room, 0)
            text = text[:max(room, 0)]
        self.parts.append(text)
        self.size += len(text)
        if self.eager is not None and text:
            _flush(self.eager)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def take(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[oomkit: {self.dropped} more characters of policy output dropped]\n"
        # While loading, OUTPUT_MAX bounds the whole load, not each write.
        self.parts, self.dropped = [], 0
        if self.eager is None:
            self.size = 0
        return text


_out, _err = Capture(), Capture()


def _flush(chan: Channel | None = None) -> None:
    """Send what the policy printed (the daemon prints it before the answer)."""
    out, err = _out.take(), _err.take()
    if chan is not None and (out or err):
        chan.send(["output", out, err])


def confine(memory: int | None) -> list[str]:
    """Steps 1 and 2; returns what could not be done (said in the ready message)."""
    from oomkit.sandbox import seccomp

    missing = []
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 64)]
    if memory:
        limits.append((resource.RLIMIT_AS, memory))
    for which, value in limits:
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            missing.append(f"rlimit {which}: {exc}")
    why = seccomp.install()
    if why:
        missing.append(why)
    return missing


def drop(uid: int, gid: int) -> list[str]:
    """Step 4: as root, become ``uid``/``gid`` for good; otherwise say why not."""
    import ctypes
    import signal

    missing = []
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    else:
        missing.append(f"not root: runs as uid {os.geteuid()} (no uid change possible)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return missing


def main(chan: Channel, request: dict[str, Any]) -> None:
    """The worker's life, in the forked child; never returns."""
    code = 0
    try:
        sys.dont_write_bytecode = True
        sys.path[:] = request["sys_path"]
        sys.stdout, sys.stderr = _out, _err
        missing = confine(request.get("memory"))
        if request.get("early"):
            missing += drop(request["uid"], request["gid"])
        from oomkit.errors import PolicyLoadError
        from oomkit.policies.loader import make_policy
        from oomkit.policy import policy_label

        _out.eager = _err.eager = chan
        try:
            policy = make_policy(request["ref"], request["params"], request["base_dir"])
        except PolicyLoadError as exc:
            _flush(chan)
            chan.send(["load_error", str(exc)])
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - whatever an import may raise
            _flush(chan)
            chan.send(["load_error", f"policy {request['ref']!r} failed to load: {type(exc).__name__}: {exc}"])
            os._exit(0)
        _out.eager = _err.eager = None
        _out.size = _err.size = 0
        if not request.get("early"):
            missing += drop(request["uid"], request["gid"])
        _flush(chan)
        chan.send(["ready", policy_label(policy), missing])
        serve(chan, policy)
    except ChannelClosed:
        pass        # the daemon went away or let this worker go
    except BaseException:  # noqa: BLE001 - the worker ends; the daemon sees it gone
        code = 1
    finally:
        os._exit(code)
