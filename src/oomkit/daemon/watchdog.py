"""The dead man's switch: a separate, tiny process (stdlib only) that puts
back every kernel setting the daemon changed if the daemon dies or stops
answering.

On cgroup v1 a memcg with ``oom_kill_disable 1`` pauses its OOMing tasks
until someone acts; if that someone is a crashed daemon, they would wait
forever.  The daemon (``oomkit.daemon.restore.Restorer``) tells the
watchdog, over a pipe on its stdin, one line per setting:

- ``+`` and a JSON list ``[path, restore, pid, starttime]``: the daemon is
  about to write ``path``; ``restore`` is the text to write back (``pid`` and
  ``starttime``, or null: write back only if that pid still has that start
  time, for ``/proc/PID/oom_score_adj``);
- ``-`` and a JSON string ``path``: the daemon put it back itself;
- ``.``: a heartbeat, several times per timeout; with ``--ack`` each is
  answered with ``.`` on stdout, so the daemon notices a watchdog that is
  stopped (SIGSTOP) or stuck;
- ``bye``: end without touching anything (the daemon restored everything).

On EOF (the daemon died), a silence longer than the timeout (it hangs), or
SIGTERM, the watchdog writes every restore text it holds (on v1 the kernel's
killer then acts at once) and exits.

Run as ``python -I -S watchdog.py TIMEOUT_SECONDS [--ack]``.  ``oomkit
restore`` uses :func:`write_back` too: one implementation of putting a
setting back.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time


def write_back(path: str, text: str, pid: int | None = None, starttime: int | None = None) -> str:
    """Write ``text`` to ``path``; with ``pid``, only if that pid still has ``starttime``
    (field 22 of /proc/PID/stat).  Returns what was done, in a few words."""
    try:
        if pid is None:
            _write(path, text)
            return "restored"
        # A /proc/PID directory fd names one process: if it exits and the pid is
        # reused, reads and writes through it fail (ESRCH) instead of reaching the new one.
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _starttime(dfd) != starttime:
                return f"skipped: pid {pid} is another process now"
            _write(os.path.basename(path), text, dfd)
            return "restored"
        finally:
            os.close(dfd)
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    except OSError as exc:
        if exc.errno == 19:     # ENODEV: a cgroup file whose cgroup was removed
            return "gone"
        return f"failed: {exc.strerror or exc}"


def _write(path: str, text: str, dir_fd: int | None = None) -> None:
    # O_TRUNC as `echo 0 > file`: ignored by cgroupfs and /proc, right for a plain file
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def _starttime(dfd: int) -> int:
    fd = os.open("stat", os.O_RDONLY, dir_fd=dfd)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    # comm may hold spaces and parentheses: the fields follow the last ")".
    return int(data[data.rindex(b")") + 2:].split()[19])


def release(held: dict[str, tuple]) -> None:
    """Put back every held setting, the last taken first."""
    for path, (text, pid, starttime) in reversed(list(held.items())):
        write_back(path, text, pid, starttime)


def apply(line: bytes, held: dict[str, tuple]) -> bool:
    """One line from the daemon into ``held``; False for ``bye``."""
    text = line.decode("utf-8", "surrogateescape")
    if text == "bye":
        return False
    try:
        if text.startswith("+"):
            path, restore, pid, starttime = json.loads(text[1:])
            held.setdefault(path, (restore, pid, starttime))
        elif text.startswith("-"):
            held.pop(json.loads(text[1:]), None)
    except (ValueError, TypeError):
        print(f"oomkit-watchdog: ignoring a malformed line {text[:80]!r}", file=sys.stderr, flush=True)
    return True


def serve(fd: int, timeout: float, ack: int | None = None) -> str:
    held: dict[str, tuple] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    buf = b""
    last = time.monotonic()
    while not stop:
        left = timeout - (time.monotonic() - last)
        if left <= 0:
            release(held)
            return "silence"
        try:
            ready, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            release(held)
            return "eof"
        last = time.monotonic()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        beats = 0
        for line in lines:
            if line == b".":
                beats += 1
            elif not apply(line, held):
                return "bye"
        if beats and ack is not None:
            _answer(ack)
    release(held)
    return stop[0]


def _answer(fd: int) -> None:
    try:
        os.write(fd, b".")
    except (BlockingIOError, BrokenPipeError):
        pass    # the daemon reads its answers late, or is gone: EOF on stdin says which


def main() -> None:
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    ack = sys.stdout.fileno() if "--ack" in sys.argv[2:] else None
    if ack is not None:
        os.set_blocking(ack, False)
    # The daemon starts us in a session of our own (start_new_session), so a
    # signal to its process group, a ^C included, spares us.
    why = serve(sys.stdin.fileno(), timeout, ack)
    if why != "bye":
        print(f"oomkit-watchdog: daemon {why}: put back every setting it held",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
