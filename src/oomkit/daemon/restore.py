"""Every kernel setting the daemon changes, put back even if the daemon dies.

Three layers, each covering the failure of the one before:

1. the daemon itself, on SIGTERM/SIGINT (each event source restores what it took);
2. the watchdog (``watchdog.py``), a separate process told every setting
   before it is written: it puts them back if the daemon dies (its pipe
   closes) or falls silent;
3. the state file in ``state_dir`` (default ``/run/oomkit``), written before
   the watchdog is told: when both die at once (``systemctl kill -s KILL``, or
   the final SIGKILL after ``TimeoutStopSec``), ``oomkit restore`` (the unit's
   ``ExecStopPost``) or the next daemon's start writes back the true originals.

The state file is a journal of JSON lines (``["hold", path, restore, pid,
starttime]``, ``["drop", path]``, ``["watchdog", pid, starttime]``), appended
with one ``write`` per line and compacted by an atomic rename when it grows,
so taking 10,000 memcgs costs 10,000 small appends, not 10,000 rewrites.  A
lock (``flock`` on ``state_dir/lock``) makes one daemon per state dir: a second
one would pause the same OOMs, and stopping either would disarm the other.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oomkit.daemon import watchdog as watchdog_module
from oomkit.daemon.files import remove_file, replace_file
from oomkit.errors import ConfigError, KernelError
from oomkit.linux import pidfd

log = logging.getLogger("oomkit")

STATE, LOCK = "state", "lock"
MAX_STATE = 64 << 20        # a state file larger than this is not ours: refuse to read it


@dataclass(frozen=True)
class Entry:
    path: str
    restore: str
    pid: int | None = None
    starttime: int | None = None

    def line(self) -> list:
        return ["hold", self.path, self.restore, self.pid, self.starttime]


class Restorer:
    """Every kernel setting the daemon changes, held so that it is put back even if the daemon dies."""

    def __init__(self, state_dir: str | Path, watchdog_timeout: float, *, watchdog: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.state_dir = Path(state_dir)
        self.timeout = watchdog_timeout
        self.use_watchdog = watchdog
        self.clock = clock
        self.held: dict[str, Entry] = {}
        self.watchdog_pid: int | None = None
        # Called after a watchdog that put everything back (it heard nothing from us
        # for its timeout) was replaced: the owners write their settings again.
        self.on_handback: list[Callable[[], None]] = []
        self._lock_fd: int | None = None
        self._journal: int | None = None
        self._lines = 0
        self._link: _Watchdog | None = None
        self._untold = False       # the current watchdog missed some of what we hold: replace it

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        """Lock the state dir, put back what a previous run left, start the watchdog."""
        prepare_dir(self.state_dir)
        self._lock_fd = lock(self.state_dir)
        try:
            for line in _restore_locked(self.state_dir):
                log.warning("oomkit: left by a previous run: %s", line)
            self._compact()
            if self.use_watchdog:
                self._spawn()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Put back anything still held, let the watchdog go, remove the state file."""
        for path in reversed(list(self.held)):
            entry = self.held[path]
            log.debug("oomkit: %s still held at exit: %s", _show(path),
                      watchdog_module.write_back(path, entry.restore, entry.pid, entry.starttime))
            self.drop(path)
        if self._link is not None:
            self._link.close()
            self._link = None
            self.watchdog_pid = None
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
            remove_file(self.state_dir / STATE, "the state file")
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # releases the flock
            self._lock_fd = None

    # -- what the daemon changes ----------------------------------------------------

    def hold(self, path: str, restore: str, *, pid: int | None = None,
             starttime: int | None = None) -> None:
        """Before the daemon writes ``path`` (a cgroupfs or /proc file): remember ``restore``
        (the text to write back).  With pid+starttime (clock ticks, /proc/PID/stat field 22),
        restore only if that pid still has that start time (for /proc/PID/oom_score_adj).
        Persisted (atomic write, 0600, state dir 0700) and told to the watchdog before returning.
        Holding a path already held keeps the first ``restore``: the true original."""
        if path in self.held:
            return
        entry = Entry(path, restore, pid, starttime)
        self._append(entry.line())
        self.held[path] = entry
        self._tell("+" + json.dumps(entry.line()[1:]))

    def drop(self, path: str) -> None:
        """The daemon put ``path`` back itself (or the file is gone)."""
        if self.held.pop(path, None) is None:
            return
        self._append(["drop", path])
        self._tell("-" + json.dumps(path))

    def heartbeat(self) -> None:
        """We are alive; and is the watchdog?  One that exited (it put everything back
        after our silence) or that does not answer within the timeout (stopped, stuck)
        is replaced, and told everything we hold."""
        link = self._link
        if link is None:
            return
        now = self.clock()
        state = link.poll(now)
        if self._untold:
            self._replace(handed_back=state == "exited")
        elif state == "exited":
            log.error("oomkit: the watchdog (pid %s) exited%s; starting another",
                      self.watchdog_pid, link.why())
            self._replace(handed_back=True)
        elif state == "silent":
            log.error("oomkit: the watchdog (pid %s) has not answered for %.1fs (stopped or "
                      "stuck); replacing it", self.watchdog_pid, now - (link.unanswered or now))
            self._replace(handed_back=False)
        else:
            link.beat(now)

    # -- the watchdog ---------------------------------------------------------------------

    def _spawn(self) -> None:
        """A watchdog told everything we hold; KernelError if it does not take it
        (at the daemon's start: it fails to start, with nothing changed yet)."""
        if not self._spawn_told():
            raise KernelError(f"the new watchdog (pid {self.watchdog_pid}) does not read its pipe")

    def _spawn_told(self) -> bool:
        link = self._link = _Watchdog(self.timeout, self.clock)
        self.watchdog_pid = link.pid
        self._append(["watchdog", link.pid, link.starttime])
        return all(link.send("+" + json.dumps(entry.line()[1:])) for entry in self.held.values())

    def _replace(self, handed_back: bool) -> None:
        """A new watchdog for one gone or stuck.  One too slow to take what we hold
        (a machine so loaded that it does not read its pipe within the timeout) is
        no reason to stop handling OOMs: it is replaced again at the next heartbeat,
        and meanwhile the state file still records every setting for a restart."""
        old = self._link
        if old is None:
            return
        old.kill()
        self._untold = not self._spawn_told()
        if self._untold:        # it may hold a torn line: never trusted, replaced
            log.error("oomkit: the new watchdog (pid %s) did not take the %d settings we hold "
                      "within %gs; trying another at the next heartbeat", self.watchdog_pid,
                      len(self.held), self.timeout)
            return
        log.error("oomkit: watchdog pid %s replaced by pid %s, holding %d settings",
                  old.pid, self.watchdog_pid, len(self.held))
        if handed_back:
            for rearm in self.on_handback:
                rearm()

    def _tell(self, line: str) -> None:
        if self._link is None:
            return
        if not self._link.send(line):
            # Stuck (a full pipe) or gone: a new one gets every held setting, this one included.
            log.error("oomkit: the watchdog (pid %s) does not read its pipe; replacing it",
                      self.watchdog_pid)
            self._replace(handed_back=self._link.proc.poll() is not None)

    # -- the state file -----------------------------------------------------------------------

    def _append(self, item: list) -> None:
        if self._journal is None:
            raise KernelError("the restorer is not started: refusing to change a setting "
                              "that could outlive us")
        if self._lines > 2 * len(self.held) + 256:
            self._compact()
        data = json.dumps(item).encode() + b"\n"
        try:
            os.write(self._journal, data)     # one write per line: a kill leaves whole lines
        except OSError as exc:
            raise KernelError(f"cannot write the state file {self.state_dir / STATE}: "
                              f"{exc.strerror}", errno=exc.errno) from None
        self._lines += 1

    def _compact(self) -> None:
        """The journal rewritten as what is held now, by an atomic rename."""
        items = [["oomkit", 1, os.getpid()]]
        if self._link is not None:
            items.append(["watchdog", self._link.pid, self._link.starttime])
        items += [e.line() for e in self.held.values()]
        data = b"".join(json.dumps(i).encode() + b"\n" for i in items)
        state = self.state_dir / STATE
        try:
            replace_file(state, data, 0o600, f".{STATE}.{os.getpid()}")
            journal = os.open(state, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"cannot write the state file {state}: {exc.strerror}",
                              errno=exc.errno) from None
        if self._journal is not None:
            os.close(self._journal)
        self._journal, self._lines = journal, len(items)


class _Watchdog:
    """The daemon's end of the pipe to ``watchdog.py`` (and of its answers)."""

    def __init__(self, timeout: float, clock: Callable[[], float]):
        self.timeout, self.clock = timeout, clock
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", watchdog_module.__file__, repr(timeout), "--ack"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise KernelError(f"cannot start the watchdog: {exc}") from None
        self.pid = self.proc.pid
        try:
            self.starttime: int | None = pidfd.start_ticks(self.pid)
        except KernelError as exc:
            log.debug("oomkit: the watchdog's start time unread (%s): recorded without it", exc)
            self.starttime = None
        stdin, stdout = self.proc.stdin, self.proc.stdout
        if stdin is None or stdout is None:      # Popen made both pipes: cannot happen
            raise KernelError("the watchdog started without its pipes")
        self.w, self.r = stdin.fileno(), stdout.fileno()
        os.set_blocking(self.w, False)
        os.set_blocking(self.r, False)
        self.sent_at = float("-inf")
        self.unanswered: float | None = None     # when the oldest unanswered heartbeat went
        self.eof = False

    def send(self, line: str) -> bool:
        """The line written whole within the timeout; False if the watchdog is gone or stuck."""
        data = line.encode("utf-8", "surrogateescape") + b"\n"
        deadline = self.clock() + self.timeout
        while data:
            try:
                n = os.write(self.w, data)
                data = data[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:      # BrokenPipeError included
                log.debug("oomkit: the watchdog took no %r (%s): gone", line, exc)
                return False
            left = deadline - self.clock()
            # poll, not select: the daemon's fds run past FD_SETSIZE (1,024)
            if left <= 0 or not _ready(self.w, select.POLLOUT, left):
                return False
        return True

    def poll(self, now: float) -> str:
        """"ok", "exited" (EOF on its answers), or "silent" (no answer within twice the timeout)."""
        try:
            while True:
                data = os.read(self.r, 4096)
                if not data:
                    self.eof = True
                    break
                self.unanswered = None
        except BlockingIOError:
            pass
        if self.eof:
            return "exited"
        # Twice the timeout: a watchdog merely slow on a loaded machine is not replaced.
        if self.unanswered is not None and now - self.unanswered > 2 * self.timeout:
            return "silent"
        return "ok"

    def beat(self, now: float) -> None:
        if now - self.sent_at < self.timeout / 8:
            return
        if self.send("."):
            self.sent_at = now
        if self.unanswered is None:
            self.unanswered = now

    def why(self) -> str:
        try:
            rc = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:   # still running: no status to tell
            return ""
        return f" (status {rc}): it put back every setting it held" if rc >= 0 else f" (signal {-rc})"

    def kill(self) -> None:
        """SIGKILL (a stopped process dies too) and reap: our child, so the pid is still ours."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def close(self) -> None:
        self.send("bye")
        self._close_pipes()
        try:
            self.proc.wait(timeout=max(2.0, self.timeout))
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            if f is None:
                continue
            try:
                f.close()
            except OSError as exc:
                log.debug("oomkit: closing a pipe to the watchdog: %s", exc)


# -- the state dir, shared with `oomkit restore` ---------------------------------------------------


def prepare_dir(path: Path) -> None:
    """Create the state dir 0700, or check one that exists as systemd checks its
    RuntimeDirectory: a directory (not a symlink) owned by us, writable by no one else."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the state dir {path}: {exc.strerror}",
                          where="daemon.state_dir") from None
    check_dir(path)


def check_dir(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the state dir {path} is not a directory (a symlink?)", where="daemon.state_dir")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"the state dir {path} is owned by uid {st.st_uid} with mode "
                          f"{stat.S_IMODE(st.st_mode):o}", where="daemon.state_dir",
                          hint="it must be ours and writable by no one else: what it holds is "
                               "written back to the kernel as root")


def lock(state_dir: Path) -> int:
    """An exclusive flock on ``state_dir/lock`` (held until its fd is closed), with our pid in it."""
    path = state_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock {path}: {exc.strerror}", where="daemon.state_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"another oomkit (pid {holder}) is running: it holds {path}",
                              hint="one oomkit per machine: stop it first") from None
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def restore_from_state(state_dir: str | Path) -> list[str]:
    """Write back every setting held in ``state_dir``'s state file (a daemon and its
    watchdog both died); one line per entry.  Refuses while a daemon holds the lock."""
    state_dir = Path(state_dir)
    if not os.path.lexists(state_dir):
        return []
    check_dir(state_dir)
    fd = lock(state_dir)
    try:
        return _restore_locked(state_dir)
    finally:
        os.close(fd)


def read_state(state_dir: Path) -> tuple[list[Entry], tuple[int, int | None] | None, int]:
    """What the state file holds: the entries in the order taken, the last watchdog
    (pid, starttime), and how many lines were not understood."""
    try:
        fd = os.open(state_dir / STATE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], None, 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STATE:
            raise ConfigError(f"{state_dir / STATE} is not a state file oomkit wrote")
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    finally:
        os.close(fd)
    held: dict[str, Entry] = {}
    dog, bad = None, 0
    for raw in data.splitlines():
        try:
            item = json.loads(raw)
            kind = item[0]
            if kind == "hold" and len(item) == 5:
                _, path, restore, pid, start = item
                if isinstance(path, str) and isinstance(restore, str) and _opt_int(pid) and _opt_int(start):
                    held.setdefault(path, Entry(path, restore, pid, start))
                    continue
            elif kind == "drop" and len(item) == 2 and isinstance(item[1], str):
                held.pop(item[1], None)
                continue
            elif kind == "watchdog" and len(item) == 3 and _opt_int(item[1]) and _opt_int(item[2]):
                dog = (item[1], item[2])
                continue
            elif kind == "oomkit":
                continue
        except (ValueError, TypeError, IndexError, KeyError):
            pass    # a malformed line: counted in ``bad``, which the caller reports
        bad += 1
    return list(held.values()), dog, bad


def _restore_locked(state_dir: Path) -> list[str]:
    entries, dog, bad = read_state(state_dir)
    lines = []
    if dog is not None and dog[0] and dog[1] is not None:
        # A watchdog that outlived its daemon (stopped, or still busy) must not write
        # after us: a new daemon may take these settings again at once.
        try:
            if pidfd.kill_pid_safely(dog[0], dog[1], mrelease=False):
                lines.append(f"killed the previous watchdog, pid {dog[0]}")
        except KernelError as exc:
            log.debug("oomkit: previous watchdog pid %s not killed: %s", dog[0], exc)
    for entry in reversed(entries):
        done = watchdog_module.write_back(entry.path, entry.restore, entry.pid, entry.starttime)
        lines.append(f"{done}: {_show(entry.path)} (back to {_show(entry.restore)})")
    if bad:
        lines.append(f"{bad} lines of {state_dir / STATE} not understood, skipped")
    remove_file(state_dir / STATE, "the state file")
    return lines


def _opt_int(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def _show(text: str) -> str:
    """A path or value from hostile names, printable on one line."""
    return text if text.isprintable() else ascii(text)


def _ready(fd: int, events: int, timeout: float) -> bool:
    """Is ``fd`` ready for ``events`` within ``timeout`` seconds?"""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(1, math.ceil(timeout * 1000))))
