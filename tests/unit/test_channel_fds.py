"""The sandbox channel waits with poll, not select: the daemon raises its
open-files limit and keeps thousands of fds (eventfds, the /proc cache), so a
worker's socket can be numbered past FD_SETSIZE (1,024), where select() fails
("filedescriptor out of range"): seen when the daemon took 1,000 memcgs."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest

from oomkit.sandbox.channel import Channel


def test_a_channel_numbered_past_1024_sends_receives_and_times_out():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3000:
        pytest.skip(f"the open-files hard limit ({hard}) is below 3,000")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 3000), hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 2500)
    sock = socket.socket(fileno=high)
    a.close()
    try:
        ours, theirs = Channel(sock), Channel(b)
        with pytest.raises(TimeoutError):
            ours.recv(time.monotonic() + 0.05)
        theirs.send({"x": 1})
        assert ours.recv(time.monotonic() + 5) == {"x": 1}
    finally:
        sock.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
