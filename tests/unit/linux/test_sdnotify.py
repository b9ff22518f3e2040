"""The sd_notify protocol against a datagram socket of the test's own (path and abstract)."""

from __future__ import annotations

import os
import secrets
import socket
import time

import pytest

from oomkit.linux.sdnotify import Notifier, socket_address, watchdog_interval


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify")
        sock.bind(name)
    else:
        name = f"@oomkit-test-{secrets.token_hex(6)}"
        sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(5)
    try:
        yield sock, name
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(5)
    return True


def test_ready_status_reloading_stopping(listener):
    sock, name = listener
    n = Notifier({"NOTIFY_SOCKET": name})
    assert n.enabled
    n.ready("cgroup v1: 2 attachments, 3 cgroups managed")
    assert received(sock) == ["READY=1", "STATUS=cgroup v1: 2 attachments, 3 cgroups managed"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    fields = received(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields[0] == "RELOADING=1"
    key, _, usec = fields[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
    n.status("same")
    assert received(sock) == ["STATUS=same"]
    n.status("same")                  # unchanged: not sent again
    assert not pending(sock)
    n.stopping()
    assert received(sock)[0] == "STOPPING=1"
    n.close()


def test_watchdog_at_half_the_interval(listener):
    sock, name = listener
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())},
                 clock=lambda: now[0])
    assert n.interval == 2.0
    assert n.next_ping() == 0.0
    n.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    now[0] += 1.9
    assert n.next_ping() == pytest.approx(0.1)
    n.watchdog()
    assert not pending(sock)          # not yet half of WATCHDOG_USEC
    now[0] += 0.1
    n.watchdog()
    assert received(sock) == ["WATCHDOG=1"]


def test_watchdog_meant_for_another_pid_or_unset():
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "2"}, pid=2) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "1000000"}, pid=2) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, pid=2) is None
    assert watchdog_interval({}, pid=2) is None


def test_no_socket_is_a_no_op_and_bad_ones_are_refused(tmp_path):
    n = Notifier({})
    assert not n.enabled and not n.send("READY=1") and n.next_ping() is None
    n.ready("x")
    n.watchdog()
    assert socket_address("relative/path") is None and socket_address("@") is None
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1"}).enabled
    # Nobody listening: dropped (logged), never raised.
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert gone.enabled and not gone.send("READY=1")
