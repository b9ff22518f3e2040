"""systemd's service notification protocol (``sd_notify(3)``), in the stdlib.

A ``Type=notify`` service tells the manager how it is doing by sending
datagrams of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).  Nothing
here blocks or raises: without ``$NOTIFY_SOCKET`` every call is a no-op, and a
datagram the manager did not take is logged (debug) and dropped, as
libsystemd's ``sd_notify`` does.

The service watchdog (``WatchdogSec=``): the manager passes ``$WATCHDOG_USEC``
(and ``$WATCHDOG_PID``, the pid meant) and restarts the service unless
``WATCHDOG=1`` arrives within that time; :meth:`Notifier.watchdog` sends it
at most every half of it, as ``sd_watchdog_enabled(3)`` recommends.  It is
called from the daemon's event loop only, so a stuck loop stops pinging.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("oomkit")


def socket_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: ``@name`` is the abstract
    namespace (a leading NUL); an absolute path is a path; anything else is
    refused (sd_notify accepts only these two, and ``vsock:`` which we do not)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or None
    when the watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    usec, meant = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if meant and (not meant.isdigit() or int(meant) != pid):
        return None
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2e6


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds: what ``MONOTONIC_USEC=`` beside
    ``RELOADING=1`` carries (systemd 253+ wants it for ``Type=notify-reload``)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Tell systemd (when it asked) that we are ready, reloading, stopping, alive."""

    def __init__(self, env: Mapping[str, str] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, pid: int | None = None):
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("oomkit: $NOTIFY_SOCKET %r is neither a path nor @abstract: not notifying", raw)
        self.clock = clock
        self.interval = watchdog_interval(env, os.getpid() if pid is None else pid) \
            if self.address is not None else None
        self._last_ping: float | None = None
        self._status: str | None = None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when nobody took it."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "backslashreplace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            log.debug("oomkit: sd_notify %s not taken (%s): systemd will notice", fields[0], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """``READY=1``: every configured cgroup is armed; units ordered after us may start."""
        self._status = status
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: restoring every cgroup setting")

    def status(self, text: str) -> None:
        """``STATUS=`` (what ``systemctl status`` shows), sent only when it changed."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def next_ping(self) -> float | None:
        """Seconds until the next ``WATCHDOG=1`` is due (None: no watchdog)."""
        if self.interval is None:
            return None
        if self._last_ping is None:
            return 0.0
        return max(0.0, self._last_ping + self.interval - self.clock())

    def watchdog(self) -> None:
        """``WATCHDOG=1`` if half of ``$WATCHDOG_USEC`` passed since the last one."""
        if self.interval is None:
            return
        now = self.clock()
        if self._last_ping is None or now - self._last_ping >= self.interval:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
