"""What an upstream call gives back: its errors, and a response whose body streams in.

:class:`UpstreamResponse` is fed by a :class:`pygate.upstream.client.Connection`
and read by the proxy (or an aggregate call); the errors are mapped to 502/504
by :mod:`pygate.upstream.forward`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDict

if TYPE_CHECKING:
    from .client import Connection

HIGH_WATER = 256 * 1024  # buffered response bytes before reading from the upstream pauses


class UpstreamError(Exception):
    """An upstream call failed; ``reason`` is safe to show to clients."""

    reason = "failed"


class ConnectError(UpstreamError):
    reason = "refused the connection"


class ConnectTimeout(UpstreamError, TimeoutError):
    reason = "did not accept the connection in time"


class ReadTimeout(UpstreamError, TimeoutError):
    reason = "did not answer in time"


class Disconnected(UpstreamError):
    reason = "closed the connection without a complete response"


class ProtocolError(UpstreamError):
    reason = "sent a malformed response"


class BodyLengthMismatch(UpstreamError):
    """A streamed request body ran past or short of the Content-Length sent for it:
    the connection was dropped before the upstream could misread what followed."""

    reason = "was sent a request body that did not match its Content-Length"


class UpstreamResponse:
    """A response whose head has arrived; the body is read with :meth:`read` or ``async for``."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_size",
        "_waiter",
        "close_delimited",
        "content_length",
        "headers",
        "on_release",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection, status: int, reason: str,
                 headers: CIMultiDict[str]) -> None:
        self._conn: Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        # the body ends when the connection does (no Content-Length, not chunked)
        self.close_delimited = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        # called once when the response is released or closed (in-flight accounting)
        self.on_release: Callable[[], None] | None = None

    # -- fed by the connection -------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None

    # -- read by the proxy -------------------------------------------------------
    async def chunk(self) -> bytes:
        """The next piece of the body as it arrived; ``b""`` at its end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._size -= len(data)
                if self._conn is not None and self._size < HIGH_WATER // 4:
                    self._conn.resume_reading()
                return data
            if self._done:
                self.release()
                return b""
            conn = self._conn
            if conn is None or conn.lost:
                raise Disconnected()
            self._waiter = conn.loop.create_future()
            await conn.wait(self._waiter)

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.chunk():
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while chunk := await self.chunk():
            yield chunk

    def release(self) -> None:
        """Give the connection back (reusable only when the body was read to its end)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.done_with(reusable=self._done)
        self._released()

    def _released(self) -> None:
        callback, self.on_release = self.on_release, None
        if callback is not None:
            callback()

    def close(self) -> None:
        """Drop the connection (an unfinished body or a client that went away)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.done_with(reusable=False)
        self._released()
