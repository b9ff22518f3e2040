"""The pipe between the daemon and a policy worker: msgpack messages, each
framed by its 4-byte length, over one end of a Unix stream socketpair.

Every message is a list whose first item says what it is.  The daemon never
trusts what a worker sends: a message too long, not msgpack, or not one of
the shapes :mod:`oomkit.sandbox.runner` expects ends the worker.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import time
from typing import Any

import msgspec

_HEADER = struct.Struct(">I")
#: The most a worker may send in one message (requests are small; the largest
#: is a refused action's reason).  The daemon's messages (a context) are not bounded.
WORKER_MESSAGE_MAX = 64 * 1024

#: A str that is not valid UTF-8 (a name read with surrogateescape, a policy's
#: reason) crosses as this msgpack extension: its surrogateescape bytes.
_EXT_SURROGATES = 1


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_SURROGATES:
        return bytes(data).decode("utf-8", "surrogateescape")
    raise ValueError(f"unknown msgpack extension {code}")


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def _escaped(value: Any) -> Any:
    """``value`` with every str that UTF-8 cannot encode as the extension (the slow
    path, taken only when the fast one met such a string)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return msgspec.msgpack.Ext(_EXT_SURROGATES, value.encode("utf-8", "surrogateescape"))
        return value
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    return value


def encode(message: Any) -> bytes:
    try:
        return _encoder.encode(message)
    except UnicodeEncodeError:
        return _encoder.encode(_escaped(message))


class ChannelClosed(Exception):
    """The other end is gone (EOF, a reset), or sent what cannot be read."""


class Channel:
    """Blocking, whole-message send and receive; ``recv`` takes a deadline."""

    def __init__(self, sock: socket.socket, limit: int | None = None):
        self.sock, self.limit = sock, limit
        self._buf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> None:
        data = encode(message)
        try:
            self.sock.sendall(_HEADER.pack(len(data)) + data)
        except OSError as exc:
            raise ChannelClosed(f"send: {exc.strerror or exc}") from None

    def recv(self, until: float | None = None) -> Any:
        """The next message; TimeoutError once ``time.monotonic()`` reaches ``until``."""
        while True:
            message = self._take()
            if message is not None:
                return message[0]
            if until is not None:
                left = until - time.monotonic()
                # poll, not select: the daemon's fds run past FD_SETSIZE (1,024)
                if left <= 0 or not _ready(self.sock.fileno(), select.POLLIN, left):
                    raise TimeoutError
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError as exc:
                raise ChannelClosed(f"recv: {exc.strerror or exc}") from None
            if not chunk:
                raise ChannelClosed("the other end closed")
            self._buf += chunk

    def _take(self) -> tuple[Any] | None:
        if len(self._buf) < 4:
            return None
        (size,) = _HEADER.unpack_from(self._buf)
        if self.limit is not None and size > self.limit:
            raise ChannelClosed(f"a message of {size} bytes (at most {self.limit})")
        if len(self._buf) < 4 + size:
            return None
        data = bytes(self._buf[4:4 + size])
        del self._buf[:4 + size]
        try:
            return (_decoder.decode(data),)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ChannelClosed(f"not msgpack: {exc}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass        # closing a socket only fails for a bad fd: nothing left to release


def _ready(fd: int, events: int, timeout: float) -> bool:
    """Is ``fd`` ready for ``events`` within ``timeout`` seconds?"""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(1, math.ceil(timeout * 1000))))
