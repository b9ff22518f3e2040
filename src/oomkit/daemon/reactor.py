"""The daemon's one wait: ``epoll`` over every fd that can wake it.

Event sources register their fds with a callback; :meth:`Reactor.poll`
waits once and calls each ready fd's callback with the event mask.  Signals
reach the same wait through ``signal.set_wakeup_fd`` (see ``daemon.main``).
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable
from typing import Any

log = logging.getLogger("oomkit")


class Reactor:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}

    def register(self, fd: int, callback: Callable[..., Any], *args: Any,
                 events: int = select.EPOLLIN) -> None:
        """Call ``callback(*args, mask)`` whenever ``fd`` is ready."""
        self._ep.register(fd, events)
        self._callbacks[fd] = (callback, args)

    def unregister(self, fd: int, close: bool = True) -> None:
        self._callbacks.pop(fd, None)
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError) as exc:
            # Already closed or never registered (a cgroup gone with its fds).
            log.debug("oomkit: epoll unregister of fd %d ignored: %s", fd, exc)
        if close:
            os.close(fd)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (-1: forever), then run every ready callback."""
        for fd, mask in self._ep.poll(timeout):
            entry = self._callbacks.get(fd)
            if entry is not None:       # unregistered by an earlier callback of this batch
                entry[0](*entry[1], mask)

    def close(self) -> None:
        self._ep.close()
