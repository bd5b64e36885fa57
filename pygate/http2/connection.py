"""One HTTP/2 connection: h2's state machine, and every stream through ``Pipeline.handle``.

:class:`Http2Protocol` feeds the bytes it receives to :class:`h2.connection.H2Connection`
and turns its events into requests: each stream gets an aiohttp ``BaseRequest``
(:mod:`pygate.http2.stream`) and a task running the same handler as HTTP/1.1, so
routing, plugin chains, problem documents, request IDs, ``max_body``, streaming
and access lines are those of HTTP/1.1.

The limits (docs/security.md, "HTTP/2"; numbers in :mod:`pygate.http2.limits`):

- at most ``gateway.max_concurrent_streams`` handlers run per connection; a
  stream beyond gets REFUSED_STREAM (the client may retry it). A reset stream's
  handler counts until it has ended, so resets never buy more concurrency;
- streams reset before their handler started never start; a running handler
  sees the reset as an HTTP/1.1 handler sees its client go away (the upstream
  call is abandoned, the access line says 499), and is cancelled if it still
  runs :data:`RESET_GRACE` later;
- streams reset by the client, refused, or reset by h2 for a client's fault are
  spent from a budget (rapid reset, CVE-2023-44487, and its "made you reset"
  variant); PING, SETTINGS, PRIORITY, empty DATA and unknown frames from another
  one; an overdrawn budget closes the connection with GOAWAY ENHANCE_YOUR_CALM;
- while the peer does not read what the gateway writes, the gateway does not
  read what the peer writes (automatic PING and SETTINGS answers cannot pile up);
- the first request head must arrive within ``gateway.header_timeout`` of the
  connection's opening, a later one within that of its first bytes; a connection
  with no stream open closes after ``gateway.keepalive_timeout``;
- a protocol error (anything h2 refuses: malformed requests and smuggling shapes
  included) closes the connection with h2's GOAWAY, logged at info.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiohttp.streams import EMPTY_PAYLOAD
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from ..sanitize import request_id
from .engine import goaway_frame, head_pending, new_connection, reopen
from .handling import access_line, refuse, serve
from .limits import (
    CONNECTION_WINDOW,
    CONTROL_BURST,
    CONTROL_RATE,
    RESET_WINDOW,
    STREAM_WINDOW,
    Budget,
    reset_burst,
)
from .request import Refused, request_message
from .stream import RequestBody, Stream

if TYPE_CHECKING:
    from . import Http2Server

log = structlog.get_logger("pygate")

RESET_GRACE = 1.0
"""Seconds a reset stream's handler may take to notice (its upstream call is let go
within a quarter of a second) before it is cancelled."""

LINGER = 2.0
"""Seconds a closed connection still reads (and drops) what the peer sends, after its
GOAWAY and end of data: closing a socket with unread bytes resets it, and the reset
can destroy the GOAWAY before the peer has read it (nginx's lingering close)."""


class Http2Protocol(asyncio.Protocol):
    """The asyncio protocol of one HTTP/2 connection (after ALPN ``h2`` or the h2c preface)."""

    def __init__(self, edge: Http2Server) -> None:
        self.edge = edge
        settings = edge.settings
        self.limit = settings.max_concurrent_streams
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.conn = new_connection(self.limit)
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ssl_context: Any = None
        self.peername: Any = None
        self.sockname: Any = None
        self.streams: dict[int, Stream] = {}
        self.active = 0  # handlers running (reset ones included, until they end)
        self.served = 0  # requests received
        self.closed = False
        self.goaway_sent = False
        self.last_stream_id = 2**31 - 1
        self._paused = False  # the peer is not reading: neither do we
        self._flush_scheduled = False
        self._drained: asyncio.Future[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._head_priority: PriorityUpdated | None = None
        burst = reset_burst(self.limit)
        self._resets = Budget(burst, burst / RESET_WINDOW)
        self._control = Budget(CONTROL_BURST, CONTROL_RATE)

    # -- asyncio -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self.ssl_context = transport.get_extra_info("sslcontext")
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
        self._flush()
        self.edge.connections.add(self)
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)
        if self.edge.draining:
            self.goaway()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            log.info("HTTP/2 protocol error; connection closed",
                     error=f"{type(exc).__name__}: {exc}", client=self._client())
            self.close()
            return
        try:
            for event in events:
                handle = _EVENTS.get(type(event))
                if handle is not None:
                    handle(self, event)
                    if self.closed:
                        return
        except Exception as exc:  # a defect of the gateway's: this connection only
            log.error("HTTP/2 connection failed", error=repr(exc), exc_info=exc)
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection(ErrorCodes.INTERNAL_ERROR)
            self.close()
            return
        self._flush_soon()
        if self.served:
            self._watch_head()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._forget()
        self.edge.connections.discard(self)
        self.transport = None
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- events ------------------------------------------------------------------------

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        self._head_priority = event.priority_updated
        self.served += 1
        self._cancel_timers()
        if self.goaway_sent and stream_id > self.last_stream_id:
            self._refuse(stream_id)  # after our GOAWAY: the client may retry elsewhere
            return
        if self.active >= self.limit:
            self._refuse(stream_id)
            self._spend_reset()
            return
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.active += 1
        ended = event.stream_ended is not None
        stream.request_done = ended
        try:
            message = request_message(event.headers or [], ended=ended)
        except Refused as refusal:
            stream.body = EMPTY_PAYLOAD
            stream.task = self.loop.create_task(refuse(self, stream, refusal))
            return
        if ended or message.headers.get("Content-Length") == "0":
            stream.body = EMPTY_PAYLOAD
        else:
            stream.body = RequestBody(stream, self.loop)
        stream.task = self.loop.create_task(serve(self, stream, message))

    def _data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        data = event.data or b""
        flow = event.flow_controlled_length or 0
        body = stream.body if stream is not None else None
        if not data and event.stream_ended is None and not self._control.spend():
            self.calm("too many empty DATA frames")
            return
        if stream is None or stream.reset or type(body) is not RequestBody:
            if flow:  # nobody reads it: hand the window back at once
                self._acknowledge(flow, event.stream_id or 0)
            return
        if flow > len(data):  # padding: never read, acknowledged now
            self._acknowledge(flow - len(data), stream.id)
        if data:
            stream.unacked += len(data)
            body.feed_data(data)

    def _ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is not None:
            stream.request_done = True
            body = stream.body
            if type(body) is RequestBody and not body.is_eof():
                body.feed_eof()

    def _stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None or stream.reset:
            return
        premature = not stream.response_done
        stream.abandon()
        self._later_cut(stream)
        if premature:
            self._spend_reset()

    def _window(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.wake()
        else:
            self._wake_all()

    def _settings(self, event: RemoteSettingsChanged) -> None:
        if not self._control.spend():
            self.calm("too many SETTINGS frames")
        elif SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._wake_all()

    def _control_frame(self, event: Any) -> None:
        if event is self._head_priority:  # the priority of a HEADERS frame, not a frame
            return
        if not self._control.spend():
            self.calm(f"too many {type(event).__name__} events")

    def _terminated(self, event: ConnectionTerminated) -> None:
        log.debug("GOAWAY from the client", error_code=event.error_code,
                  client=self._client())
        if event.error_code == ErrorCodes.NO_ERROR and self.active:
            # A graceful GOAWAY: the streams in flight may finish (RFC 9113 section
            # 6.8), though h2 closes its state machine on any GOAWAY received.
            reopen(self.conn)
            self.goaway()
        else:
            self.close()

    # -- streams -----------------------------------------------------------------------

    def finished(self, stream: Stream) -> None:
        """``stream``'s task is over: its place is free, its unread body's window given
        back, and the stream ended if the response left it open."""
        self.active -= 1
        self.streams.pop(stream.id, None)
        if self.closed:
            return
        if stream.unacked:  # what the handler left unread: the connection's window back
            self._acknowledge(stream.unacked, stream.id)
            stream.unacked = 0
        if not stream.reset and not stream.response_done:  # never passed off as complete
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
        elif not stream.reset and not stream.request_done:
            # answered before the request's end (413, 404 with a body on its way...):
            # the client may stop sending (RFC 9113 section 8.1)
            self.reset(stream, ErrorCodes.NO_ERROR)
        self._flush_soon()
        if not self.active:
            if self.goaway_sent:
                self.close()
            elif self._idle_timer is None:
                self._idle_timer = self.loop.call_later(self.keepalive_timeout, self._idle)

    def _later_cut(self, stream: Stream) -> None:
        task = stream.task
        if stream.started and task is not None and not task.done():
            self.loop.call_later(RESET_GRACE, self._cut, stream)

    @staticmethod
    def _cut(stream: Stream) -> None:
        task = stream.task
        if task is not None and not task.done() and not stream.cut:
            stream.cut = True
            task.cancel()

    # -- sending (called by the streams' writers) -------------------------------------

    def send_head(self, stream: Stream, head: list[tuple[str, str]]) -> None:
        """HEADERS now: a response head sent before its body, or an interim response."""
        if stream.reset or self.closed:
            raise ConnectionResetError("the stream was reset")
        try:
            self.conn.send_headers(stream.id, head)
        except ProtocolError:
            self._closed_meanwhile(stream)
            raise
        self._flush_soon()

    async def send(self, stream: Stream, head: list[tuple[str, str]] | None,
                   data: bytes | bytearray | memoryview, *, end: bool) -> None:
        """HEADERS (when ``head``), then ``data`` as DATA frames within the peer's windows
        (waiting for them to open), END_STREAM with the last one when ``end``."""
        conn = self.conn
        stream_id = stream.id
        view = memoryview(data)
        try:
            if stream.reset or self.closed:
                raise ConnectionResetError("the stream was reset")
            if head is not None:
                conn.send_headers(stream_id, head, end_stream=end and not view)
            elif end and not view:
                conn.end_stream(stream_id)
            while view:
                window = min(conn.local_flow_control_window(stream_id),
                             conn.max_outbound_frame_size)
                if window <= 0:
                    self._flush_soon()
                    await stream.wait_window()
                    if stream.reset or self.closed:
                        raise ConnectionResetError("the stream was reset")
                    continue
                chunk, view = view[:window], view[window:]
                conn.send_data(stream_id, chunk, end_stream=end and not view)
        except ProtocolError:
            self._closed_meanwhile(stream)
            raise  # a head h2 refuses to send (a plugin's bad header): the handler's error
        if end:
            stream.response_done = True
        self._flush_soon()
        if self._paused:
            await self.drain()

    def _closed_meanwhile(self, stream: Stream) -> None:
        """:raise ConnectionResetError: when h2 refused to send because the stream or
        the connection is over (the writer's caller treats it as a client gone)."""
        if self.closed or stream.reset or self.conn.streams.get(stream.id) is None or \
                self.conn.streams[stream.id].closed:
            raise ConnectionResetError("the stream is closed") from None

    async def drain(self) -> None:
        """Wait while the peer does not read what the gateway wrote."""
        while self._paused and not self.closed:
            if self._drained is None or self._drained.done():
                self._drained = self.loop.create_future()
            await asyncio.shield(self._drained)
        if self.closed:
            raise ConnectionResetError("the connection is closed")

    def acknowledge(self, stream: Stream, size: int) -> None:
        """``size`` bytes of ``stream``'s body were read: give the peer that window back."""
        if not self.closed:
            self._acknowledge(size, stream.id)
            self._flush_soon()

    def reset(self, stream: Stream, code: ErrorCodes) -> None:
        """Reset ``stream`` from the gateway's side (RST_STREAM ``code``)."""
        if not stream.reset and not self.closed:
            with contextlib.suppress(ProtocolError):
                self.conn.reset_stream(stream.id, code)
            self._flush_soon()
        stream.abandon()

    # -- the connection ----------------------------------------------------------------

    def goaway(self) -> None:
        """Begin a graceful close (the drain): GOAWAY, the streams in flight finish,
        new ones are refused; the connection closes once none is left.

        h2 closes its state machine on any GOAWAY it sends, which would leave the
        streams in flight unanswered; this frame is written past it.
        """
        if self.goaway_sent or self.closed or self.transport is None:
            return
        self.goaway_sent = True
        self.last_stream_id = self.conn.highest_inbound_stream_id
        self._flush()
        self.transport.write(goaway_frame(self.last_stream_id))
        if not self.active:
            self.close()

    def calm(self, reason: str) -> None:
        """The peer overdrew a budget: GOAWAY ENHANCE_YOUR_CALM, and the connection closes."""
        log.info("HTTP/2 connection closed: ENHANCE_YOUR_CALM", reason=reason,
                 client=self._client())
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM,
                                       additional_data=reason.encode())
        self.close()

    def close(self) -> None:
        """Write what is pending, end the data, and close after :data:`LINGER` (or when
        the peer does); the streams left are over."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        self._forget()
        transport = self.transport
        if transport is not None:
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(LINGER, self.abort)

    def abort(self) -> None:
        """Close at once (the end of a linger, or of a drain)."""
        self.close()
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        self._cancel_timers()
        for stream in list(self.streams.values()):
            if not stream.reset:
                stream.abandon()
                self._later_cut(stream)

    def _spend_reset(self) -> None:
        if not self._resets.spend():
            self.calm("too many streams reset")

    def _refuse(self, stream_id: int) -> None:
        with contextlib.suppress(ProtocolError):
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)

    def _acknowledge(self, size: int, stream_id: int) -> None:
        with contextlib.suppress(ProtocolError, ValueError):
            self.conn.acknowledge_received_data(size, stream_id)

    def _wake_all(self) -> None:
        for stream in self.streams.values():
            stream.wake()

    def _flush_soon(self) -> None:
        """Write what h2 has queued at the end of this loop iteration: the frames of every
        stream that answered meanwhile go out in one write (one system call)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _client(self) -> str | None:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    # -- timers ------------------------------------------------------------------------

    def _watch_head(self) -> None:
        """After the first request: a request head begun and not finished starts the
        head clock; its end (or the block's) stops it."""
        pending = head_pending(self.conn)
        if pending and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)
        elif not pending and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        pending = head_pending(self.conn)
        if self.closed or (self.served and not pending):
            return
        if pending:  # a head begun: an access line, as HTTP/1.1's 408 gets
            rid = request_id(None)
            log.info("request head timed out", status=408, request_id=rid,
                     timeout_s=self.header_timeout, client=self._client())
            access_line(self, self, 408, "the request head did not arrive in time", rid)
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(ErrorCodes.NO_ERROR)
        self.close()

    def _idle(self) -> None:
        self._idle_timer = None
        if not self.active and not self.closed:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection(ErrorCodes.NO_ERROR)
            self.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None


_EVENTS: dict[type, Any] = {
    RequestReceived: Http2Protocol._request,
    DataReceived: Http2Protocol._data,
    StreamEnded: Http2Protocol._ended,
    StreamReset: Http2Protocol._stream_reset,
    WindowUpdated: Http2Protocol._window,
    RemoteSettingsChanged: Http2Protocol._settings,
    PingReceived: Http2Protocol._control_frame,
    PriorityUpdated: Http2Protocol._control_frame,
    UnknownFrameReceived: Http2Protocol._control_frame,
    ConnectionTerminated: Http2Protocol._terminated,
}
"""What each h2 event does; the others (acknowledgements, trailers: dropped) do nothing."""


__all__ = ["LINGER", "RESET_GRACE", "Http2Protocol"]
