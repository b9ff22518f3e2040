"""The zygote: ``python -m oomkit.sandbox.zygote FD``, started (fork+exec)
once per daemon or simulation process, forks one policy worker per request.

It is exec'ed, so a worker inherits nothing of the daemon (no memory, no
descriptors but its pipe, no locked pages, no BPF maps), and it has imported
oomkit and the built-in policies already, so a worker is ready in a few
milliseconds instead of the ~0.3 s a fresh interpreter takes.

Protocol on FD (a Unix stream socket to the daemon): the daemon sends a spawn
request with two descriptors (the worker's end of a new socketpair, and where
the policy's stdout goes); the zygote forks and answers with the worker's pid
and a pidfd for it (opened before the child can be reaped: race-free), so
the daemon can SIGKILL exactly that process.  Children are reaped by the
kernel (SIGCHLD ignored).  EOF on FD ends the zygote; a worker's
parent-death signal then ends the workers.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys

import msgspec

PR_SET_PDEATHSIG = 1


def _preload() -> None:
    """What every worker needs, imported once here (copy-on-write in the workers;
    a worker that runs as another user may not be able to read Python's tree)."""
    import ctypes  # noqa: F401
    import hashlib  # noqa: F401
    import importlib.util  # noqa: F401

    import oomkit.config.files  # noqa: F401
    import oomkit.engine.guard  # noqa: F401
    import oomkit.helpers  # noqa: F401
    import oomkit.policies.builtin  # noqa: F401
    import oomkit.sandbox.seccomp  # noqa: F401
    import oomkit.sandbox.worker  # noqa: F401


def recv_request(sock: socket.socket) -> tuple[dict, list[int]] | None:
    fds = array.array("i")
    header = b""
    while len(header) < 4:
        msg, anc, _flags, _addr = sock.recvmsg(4 - len(header), socket.CMSG_SPACE(2 * fds.itemsize))
        if not msg:
            return None
        header += msg
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    size = int.from_bytes(header, "big")
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            return None
        body += chunk
    return msgspec.msgpack.decode(body), list(fds)


def spawn(request: dict, fds: list[int], control: socket.socket) -> tuple[int, int | None]:
    """Fork one worker on ``fds`` = [its socket, its stdout]; returns (pid, pidfd)."""
    pid = os.fork()
    if pid == 0:
        try:
            control.close()
            os.dup2(fds[1], 1)
            for fd in fds[1:]:
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            from oomkit.sandbox.channel import Channel
            from oomkit.sandbox.worker import main

            main(Channel(socket.socket(fileno=fds[0])), request)
        finally:
            os._exit(1)
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:
        pidfd = None        # it died at once and was reaped: the daemon sees its socket closed
    return pid, pidfd


def serve(fd: int) -> None:
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)       # the kernel reaps the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # ^C is the daemon's to handle
    control = socket.socket(fileno=fd)
    _preload()
    while True:
        try:
            got = recv_request(control)
        except OSError:     # the daemon is gone (ECONNRESET when it died): so are we
            return
        if got is None:
            return
        request, fds = got
        if len(fds) != 2:
            for f in fds:
                os.close(f)
            continue
        pid, pidfd = spawn(request, fds, control)
        for f in fds:
            os.close(f)
        reply = msgspec.msgpack.encode([pid])
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))] if pidfd is not None else []
        control.sendmsg([len(reply).to_bytes(4, "big"), reply], anc)
        if pidfd is not None:
            os.close(pidfd)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
