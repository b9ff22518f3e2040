"""The dead man's switch: a separate, tiny process (stdlib only) that hands
every memcg the daemon took back to the kernel if the daemon dies or stops
answering.

On cgroup v1 a memcg with ``oom_kill_disable 1`` pauses its OOMing tasks
until someone acts; if that someone is a crashed daemon, they would wait
forever.  The daemon tells the watchdog, over a pipe on its stdin, each
``memory.oom_control`` it changed (``+PATH``/``-PATH``) and sends a
heartbeat (``.``) several times per timeout.  On EOF (the daemon died), a
silence longer than the timeout (it hangs), or SIGTERM, the watchdog writes
``0`` to every file it holds (the kernel's killer then acts at once) and
exits; ``bye`` ends it without touching anything (the daemon restored
everything itself).

Run as ``python -m oomkit.daemon.watchdog TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def release(paths: set[str]) -> None:
    for path in sorted(paths):
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError:
            pass    # the cgroup is gone: nothing to hand back


def serve(fd: int, timeout: float) -> str:
    held: set[str] = set()
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
        for line in lines:
            text = line.decode("utf-8", "surrogateescape")
            if text == "bye":
                return "bye"
            if text.startswith("+"):
                held.add(text[1:])
            elif text.startswith("-"):
                held.discard(text[1:])
    release(held)
    return stop[0]


def main() -> None:
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    # The daemon starts us in a session of our own (start_new_session), so a
    # signal to its process group, a ^C included, spares us.
    why = serve(sys.stdin.fileno(), timeout)
    if why != "bye":
        print(f"oomkit-watchdog: daemon {why}: handed every paused memcg back to the kernel",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
