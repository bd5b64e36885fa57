"""One HTTP/2 stream as aiohttp's request machinery sees a connection.

:class:`aiohttp.web.BaseRequest` takes a message, a body reader, a "protocol"
(for the transport and the peer's addresses) and a payload writer. For a stream
these are:

- :class:`Stream`: the protocol. Its :attr:`Stream.transport` is a
  :class:`StreamTransport`, whose ``is_closing()`` turns true once the stream is
  reset (so the proxy's client watch lets go of the upstream, as for an HTTP/1.1
  client that went away) and whose ``abort()`` resets the stream (an upstream
  body cut short: PRODUCT.md section 4, item 10).
- :class:`RequestBody`: the body, fed from DATA frames; every chunk the consumer
  takes is acknowledged to the peer (WINDOW_UPDATE), so that the peer never has
  more than one stream window unread at the gateway.
- :class:`ResponseWriter`: ``write_headers`` becomes a HEADERS frame, ``write``
  DATA frames within the peer's flow-control window (awaiting WINDOW_UPDATE: a
  slow reader stops the proxy from reading its upstream), ``write_eof``
  END_STREAM.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.compression_utils import ZLibCompressor
from aiohttp.streams import StreamReader
from h2.errors import ErrorCodes
from multidict import CIMultiDict

from ..protocol import MAX_FIELD
from .request import MAX_HEADERS

if TYPE_CHECKING:
    from .connection import Http2Protocol

CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
"""Header fields HTTP/2 forbids (RFC 9113 section 8.2.2); dropped from responses."""


class Stream:
    """A stream's state, and the "protocol" its :class:`BaseRequest` reads."""

    __slots__ = ("body", "cut", "id", "link", "request_done", "reset", "response_done",
                 "started", "task", "transport", "unacked", "waiter", "writer")

    max_field_size = MAX_FIELD  # read by aiohttp's multipart reader only
    max_headers = MAX_HEADERS

    def __init__(self, link: Http2Protocol, stream_id: int) -> None:
        self.id = stream_id
        self.link = link
        self.transport = StreamTransport(self)
        self.writer = ResponseWriter(self)
        self.body: StreamReader | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = False  # the handler has begun (a stream reset before it never runs)
        self.reset = False  # reset by either side, or its connection is gone
        self.cut = False  # its handler was cancelled by the protocol after a reset
        self.request_done = False  # END_STREAM received
        self.response_done = False  # END_STREAM sent
        self.unacked = 0  # body bytes received and not yet acknowledged
        self.waiter: asyncio.Future[None] | None = None  # for the peer's window

    # -- what BaseRequest and StreamReader read from their "protocol" ---------------

    @property
    def ssl_context(self) -> Any:
        return self.link.ssl_context

    @property
    def peername(self) -> Any:
        return self.link.peername

    @property
    def sockname(self) -> Any:
        return self.link.sockname

    @property
    def connected(self) -> bool:
        return not self.link.closed

    def pause_reading(self) -> None:
        """Flow control does this: the peer sends no more than the window."""

    def resume_reading(self, resume_parser: bool = True) -> None:
        """See :meth:`pause_reading`."""

    # -- the protocol's side ---------------------------------------------------------

    def consumed(self, size: int) -> None:
        """``size`` body bytes were read by the handler: let the peer send as many more."""
        self.unacked -= size
        self.link.acknowledge(self, size)

    def wake(self) -> None:
        """The peer's window may have grown (or the stream is over): a writer looks again."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_window(self) -> None:
        waiter = self.waiter = self.link.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def abandon(self) -> None:
        """The stream is over before its end (reset, or the connection is gone): the
        handler's reads and writes fail from now on, as on a closed HTTP/1.1 connection."""
        if self.reset:
            return
        self.reset = True
        body = self.body
        if type(body) is RequestBody and not body.is_eof():
            body.set_exception(ConnectionResetError("the client reset the stream"))
        self.wake()


class StreamTransport(asyncio.Transport):
    """``request.transport`` for a stream: its connection's, as far as one stream goes."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        super().__init__()
        self._stream = stream

    def is_closing(self) -> bool:
        return self._stream.reset

    def abort(self) -> None:
        """Reset the stream: the response is cut short, never passed off as complete."""
        self._stream.link.reset(self._stream, ErrorCodes.INTERNAL_ERROR)

    def close(self) -> None:
        if not self._stream.response_done:
            self._stream.link.reset(self._stream, ErrorCodes.CANCEL)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._stream.link.transport
        return default if transport is None else transport.get_extra_info(name, default)


class RequestBody(StreamReader):
    """A stream's request body: what the handler reads is acknowledged to the peer."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(stream, 2**17, loop=loop)  # type: ignore[arg-type]
        self._stream = stream

    def _read_nowait_chunk(self, n: int) -> bytes:
        # Every read of StreamReader's (read, readany, readchunk, iter_any...) takes
        # its bytes here.
        data = super()._read_nowait_chunk(n)
        if data:
            self._stream.consumed(len(data))
        return data


class ResponseWriter(AbstractStreamWriter):
    """aiohttp's payload writer for one stream: HEADERS, flow-controlled DATA, END_STREAM."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._head: list[tuple[str, str]] | None = None
        self._head_sent = False
        self._eof = False
        self._compress: ZLibCompressor | None = None
        self.length: int | None = None

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        self._head = response_head(status_line, headers)

    def send_headers(self) -> None:
        head = self._take_head()
        if head is not None:
            self._stream.link.send_head(self._stream, head)

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not self._head_sent and self._head is None:
            # Before the response head: only an interim response (the proxy's
            # "100 Continue" for a request that expects one) may come this way.
            status = interim_status(chunk)
            if status is None:
                raise RuntimeError("response body written before its head")
            self._stream.link.send_head(self._stream, [(":status", status)])
            return
        if self._compress is not None:
            chunk = await self._compress.compress(chunk)
        chunk = self._clip(chunk)
        if not chunk:
            return
        self.output_size += len(chunk)
        await self._stream.link.send(self._stream, self._take_head(), chunk, end=False)

    async def write_eof(self, chunk: bytes = b"") -> None:
        if self._eof:
            return
        data: bytes | bytearray | memoryview = chunk
        if self._compress is not None:
            data = await self._compress.compress(chunk) + self._compress.flush()
        data = self._clip(data)
        self.output_size += len(data)
        self._eof = True
        await self._stream.link.send(self._stream, self._take_head(), data, end=True)

    async def drain(self) -> None:
        await self._stream.link.drain()

    def enable_compression(self, encoding: str = "deflate",
                           strategy: int | None = None) -> None:
        self._compress = ZLibCompressor(encoding=encoding, strategy=strategy)

    def enable_chunking(self) -> None:
        """HTTP/2 frames the body itself (aiohttp asks for chunks when no length is known)."""

    def _take_head(self) -> list[tuple[str, str]] | None:
        head = self._head
        if head is not None:
            self._head = None
            self._head_sent = True
        return head

    def _clip(self, chunk: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Never more body than the Content-Length sent (as aiohttp's HTTP/1.1 writer)."""
        length = self.length
        if length is None:
            return chunk
        if len(chunk) > length:
            chunk = chunk[:length]
        self.length = length - len(chunk)
        return chunk


def response_head(status_line: str, headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    """The HEADERS of a response: ``:status`` from the status line, the fields in
    lower case, without connection-specific ones (nor those ``Connection`` names)."""
    head = [(":status", status_line.split(" ", 2)[1])]
    drop: frozenset[str] | set[str] = CONNECTION_SPECIFIC
    if "Connection" in headers:
        drop = set(CONNECTION_SPECIFIC)
        for value in headers.getall("Connection"):
            drop.update(token.strip().lower() for token in value.split(","))
    for name, value in headers.items():
        lower = name.lower()
        if lower not in drop:
            head.append((lower, value))
    return head


def interim_status(chunk: bytes | bytearray | memoryview) -> str | None:
    """The status of an HTTP/1.1 interim response written whole (``HTTP/1.1 100 ...``)."""
    start = bytes(chunk[:13])
    if start[:9] == b"HTTP/1.1 " and start[9:10] == b"1" and start[9:12].isdigit():
        return start[9:12].decode("ascii")
    return None


__all__ = ["CONNECTION_SPECIFIC", "RequestBody", "ResponseWriter", "Stream",
           "StreamTransport", "interim_status", "response_head"]
