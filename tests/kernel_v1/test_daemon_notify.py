"""``oomkit run`` speaks systemd's notify protocol to a socket of the test's own:
READY=1 only once the sandbox's memcgs are held, WATCHDOG=1 from the loop at
half of $WATCHDOG_USEC, RELOADING=1/READY=1 around a good and a bad reload,
STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import time

MiB = 1 << 20


class Listener:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path
        self.got: list[tuple[float, list[str]]] = []

    def wait(self, field: str, timeout: float = 20.0) -> list[str]:
        """The next datagram holding ``field`` (earlier ones are kept in ``got``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                fields = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                break
            self.got.append((time.monotonic(), fields))
            if field in fields:
                return fields
        raise AssertionError(f"no {field} in {timeout} s; got {self.got}")


def test_notify_ready_watchdog_reload_stopping(sandbox, oomkit_daemon, tmp_path):
    a = sandbox.cg("a", limit=64 * MiB)
    b = sandbox.cg("b", limit=64 * MiB)
    listener = Listener(str(tmp_path / "notify"))
    d = oomkit_daemon([{"cgroup": sandbox.root + "/*", "policy": "largest-task"}], run=False)
    d.env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"}
    d.start()

    ready = listener.wait("READY=1")
    # Sent after the first reconcile: by then both memcgs are held (oom_kill_disable 1).
    assert "STATUS=cgroup v1: 2 attachments, 2 cgroups managed" in ready, ready
    assert all(sandbox.fs.oom_control(cg)["oom_kill_disable"] for cg in (a, b))
    assert not [f for _, f in listener.got[:-1] if "READY=1" in f]

    # WATCHDOG=1 from the loop, about every 0.2 s (half of WATCHDOG_USEC).
    pings = [listener.wait("WATCHDOG=1", 5) and time.monotonic() for _ in range(4)]
    assert pings[-1] - pings[0] < 3.0

    # A good reload: RELOADING=1 (with MONOTONIC_USEC), then READY=1 with the new status.
    d.write_config([{"cgroup": a, "policy": "largest-task"}])
    d.signal(signal.SIGHUP)
    reloading = listener.wait("RELOADING=1")
    assert any(f.startswith("MONOTONIC_USEC=") and f[15:].isdigit() for f in reloading)
    assert "STATUS=cgroup v1: 1 attachments, 1 cgroups managed" in listener.wait("READY=1")

    # A bad one: READY=1 again, saying the running config was kept.
    d.config.write_text("[daemon\n")
    d.signal(signal.SIGHUP)
    listener.wait("RELOADING=1")
    ready = listener.wait("READY=1")
    assert any("reload failed" in f for f in ready), ready

    # SIGSTOP: a stopped loop stops pinging (what lets systemd restart a hung daemon).
    d.signal(signal.SIGSTOP)
    try:
        listener.wait("WATCHDOG=1", 2)      # at most one already in flight
    except AssertionError:
        pass
    n = len(listener.got)
    try:
        listener.wait("WATCHDOG=1", 1.0)
        raise AssertionError("a stopped daemon pinged the watchdog")
    except AssertionError as exc:
        assert "no WATCHDOG=1" in str(exc), exc
    assert len(listener.got) == n
    d.signal(signal.SIGCONT)
    listener.wait("WATCHDOG=1", 5)

    d.signal(signal.SIGTERM)
    assert "STOPPING=1" in listener.wait("STOPPING=1")
    assert d.popen.wait(timeout=20) == 0
    assert not sandbox.fs.oom_control(a)["oom_kill_disable"]
    listener.sock.close()
    os.unlink(listener.path)
