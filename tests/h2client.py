"""A small HTTP/2 client for the tests, on the ``h2`` library over asyncio streams.

It sends requests with or without bodies, many at once on one connection, and
reads their responses; with ``strict=False`` (the default) it sends header blocks
exactly as given (upper-case names, connection-specific fields, duplicated or
missing pseudo-headers), as an attacker would. A reader task feeds everything the
server sends to h2 and files it per stream; the connection's GOAWAY (error code,
last stream) and its closing are kept too.

    client = await H2Client.connect(port)
    response = await client.request("GET", "/api/users")
    assert response.status == 200
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from multidict import CIMultiDict

Headers = Sequence[tuple[str | bytes, str | bytes]]


@dataclass
class Response:
    """What came back on one stream."""

    stream_id: int
    status: int | None = None
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    chunks: list[bytes] = field(default_factory=list)  # DATA as it came
    reset: ErrorCodes | int | None = None  # RST_STREAM's code, when the stream was reset
    interim: list[int] = field(default_factory=list)  # 1xx statuses

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Stream:
    response: Response
    done: asyncio.Event = field(default_factory=asyncio.Event)
    window: asyncio.Event = field(default_factory=asyncio.Event)
    received: int = 0


class H2Client:
    """One HTTP/2 connection to a server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: H2Connection, *, auto_ack: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.auto_ack = auto_ack  # False: received DATA is never acknowledged (a slow reader)
        self.streams: dict[int, _Stream] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.error: BaseException | None = None
        self.received = 0  # DATA bytes received on every stream
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", *,
                      ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                      window: int | None = None, auto_ack: bool = True,
                      strict: bool = False) -> H2Client:
        """Open a connection and send the preface (without waiting for the server's).

        :param window: SETTINGS_INITIAL_WINDOW_SIZE for the server's responses.
        :param auto_ack: acknowledge received DATA (False: a reader that reads nothing).
        :param strict: let h2 check and normalize the header blocks sent.
        """
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname, limit=2**20)
        if ssl_context is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == "h2", "ALPN did not choose h2"
        config = H2Configuration(client_side=True, header_encoding=None,
                                 validate_outbound_headers=strict,
                                 normalize_outbound_headers=strict)
        conn = H2Connection(config=config)
        conn.initiate_connection()
        if window is not None:
            conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        client = cls(reader, writer, conn, auto_ack=auto_ack)
        client.flush()
        return client

    # -- requests ------------------------------------------------------------------------

    def start(self, method: str, path: str, headers: Headers = (), body: bytes | None = None,
              *, authority: str = "gateway.test", scheme: str = "http", end: bool = True,
              pseudo: Headers | None = None) -> int:
        """Send a request's HEADERS (and ``body``, no larger than the window, as DATA);
        its stream ID.

        ``pseudo`` replaces the pseudo-header fields entirely (for malformed heads).
        ``end=False`` leaves the stream open for :meth:`send_data`.
        """
        stream_id = self.conn.get_next_available_stream_id()
        if pseudo is None:
            pseudo = [(":method", method), (":scheme", scheme), (":authority", authority),
                      (":path", path)]
        block = [(_b(k), _b(v)) for k, v in [*pseudo, *headers]]
        self.streams[stream_id] = _Stream(Response(stream_id))
        self.conn.send_headers(stream_id, block, end_stream=end and not body)
        if body:
            self._send_data(stream_id, body, end=end)
        self.flush()
        return stream_id

    async def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` on an open stream, waiting for the server's window as needed."""
        view = memoryview(data)
        stream = self.streams[stream_id]
        try:
            while view and not stream.done.is_set():
                window = min(self.conn.local_flow_control_window(stream_id),
                             self.conn.max_outbound_frame_size)
                if window <= 0:
                    stream.window.clear()
                    await asyncio.wait_for(stream.window.wait(), 10)
                    continue
                chunk, view = view[:window], view[window:]
                self.conn.send_data(stream_id, chunk.tobytes(), end_stream=end and not view)
                self.flush()
                await self.writer.drain()
            if end and not data:
                self.conn.end_stream(stream_id)
                self.flush()
        except StreamClosedError:  # the server answered (or reset it) before the end
            pass

    def _send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)

    async def response(self, stream_id: int, within: float = 10.0) -> Response:
        """The response on ``stream_id`` once it ended (or was reset, or the connection closed)."""
        stream = self.streams[stream_id]
        await asyncio.wait_for(stream.done.wait(), within)
        return stream.response

    async def request(self, method: str, path: str, headers: Headers = (),
                      body: bytes | None = None, within: float = 10.0, **kwargs: Any) -> Response:
        """One request (its body sent as the server's window allows), and its response."""
        stream_id = self.start(method, path, headers, end=not body, **kwargs)
        if body:
            await self.send_data(stream_id, body, end=True)
        return await self.response(stream_id, within)

    async def get(self, path: str, headers: Headers = (), **kwargs: Any) -> Response:
        return await self.request("GET", path, headers, **kwargs)

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Hand ``size`` bytes of window back (with ``auto_ack=False``)."""
        self.conn.acknowledge_received_data(size, stream_id)
        self.flush()

    # -- the connection ----------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def write_raw(self, data: bytes) -> None:
        """Bytes straight onto the connection (frames built by hand)."""
        self.writer.write(data)

    async def wait_closed(self, within: float = 10.0) -> None:
        """Until the server has closed the connection."""
        await asyncio.wait_for(self.closed.wait(), within)

    async def close(self) -> None:
        self._task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buffer += data
                # One frame at a time, so that a graceful GOAWAY can be honoured
                # before the frames after it (see _event).
                while len(buffer) >= 9:
                    end = 9 + int.from_bytes(buffer[:3], "big")
                    if len(buffer) < end:
                        break
                    frame, buffer = buffer[:end], buffer[end:]
                    try:
                        events = self.conn.receive_data(frame)
                    except ProtocolError as exc:
                        self.error = exc
                        return
                    for event in events:
                        self._event(event)
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.done.set()
                stream.window.set()

    def _event(self, event: Any) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, ResponseReceived) and stream is not None:
            for name, value in event.headers or ():
                key, text = name.decode(), value.decode()
                if key == ":status":
                    stream.response.status = int(text)
                else:
                    stream.response.headers.add(key, text)
        elif isinstance(event, InformationalResponseReceived) and stream is not None:
            status = dict(event.headers or ()).get(b":status", b"0")
            stream.response.interim.append(int(status))
        elif isinstance(event, DataReceived):
            size = len(event.data or b"")
            self.received += size
            if stream is not None and size:
                stream.response.chunks.append(event.data or b"")
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id or 0)
        elif isinstance(event, (StreamEnded, TrailersReceived)) and stream is not None:
            stream.done.set()
        elif isinstance(event, StreamReset) and stream is not None:
            stream.response.reset = event.error_code
            stream.done.set()
            stream.window.set()
        elif isinstance(event, WindowUpdated):
            targets: Iterable[_Stream] = (
                [stream] if stream is not None else self.streams.values()
                if not event.stream_id else [])
            for target in targets:
                target.window.set()
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
            if event.error_code == ErrorCodes.NO_ERROR:
                # A graceful GOAWAY: the streams up to its last one still finish,
                # though h2 closes its state machine on any GOAWAY received.
                self.conn.state_machine.state = ConnectionState.CLIENT_OPEN


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


__all__ = ["PREFACE", "H2Client", "Response"]
