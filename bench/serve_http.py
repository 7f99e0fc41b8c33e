"""Transport pieces of the serving benchmark's load generator (``bench/serve_load.py``).

:class:`Deadline` is a Linux ``timerfd``: a one-shot absolute deadline on CLOCK_MONOTONIC (the
clock of ``time.monotonic``) with nanosecond resolution, which the event loop watches like a
socket, so that a request is sent at its intended time and not at asyncio's next whole
millisecond. :class:`HttpConn` is one HTTP/1.1 keep-alive connection on a raw asyncio transport,
one request at a time, parsed with httptools (uvicorn's parser). :class:`HttpTarget` pre-encodes
every request of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Deadline", "HttpConn", "HttpTarget"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Deadline:
    """A one-shot absolute deadline on CLOCK_MONOTONIC (``time.monotonic``) as a file descriptor."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def arm(self, at: float) -> None:
        at = max(at, 1e-6)  # zero would disarm
        sec = int(at)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, int((at - sec) * 1e9)))
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def consume(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


# --- HTTP/1.1 keep-alive connections -----------------------------------------------------------


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time (no pipelining)."""

    def __init__(self, on_done: Callable[[HttpConn, int, str | None], None]) -> None:
        import httptools

        self.on_done = on_done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.slot = -1
        self.alive = True

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(0, f"parse:{type(exc).__name__}")
            self.alive = False
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.busy:
            self._finish(0, "connection_lost")

    # httptools callbacks
    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.alive = False
        self._finish(status, None)

    def send(self, slot: int, data: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.slot = slot
        self.transport.write(data)

    def _finish(self, status: int, error: str | None) -> None:
        if self.busy:
            self.busy = False
            self.on_done(self, status, error)


class HttpTarget:
    def __init__(self, target: dict[str, Any], requests: Sequence[dict[str, Any]]) -> None:
        self.host = str(target["host"])
        self.port = int(target["port"])
        head = "".join(f"{k}: {v}\r\n" for k, v in (target.get("headers") or {}).items())
        self.payloads: list[bytes] = []
        for r in requests:
            body = (r.get("body") or "").encode()
            extra = (
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
            )
            self.payloads.append(
                f"{r['method']} {r['path']} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"{head}{extra}\r\n".encode()
                + body
            )
