"""Which protocol a new connection speaks: ALPN over TLS, the client preface for h2c.

Both are asyncio protocols that live only until they know, then hand the
transport (and what was read so far) to the HTTP/1.1 protocol or to
:class:`~pygate.http2.connection.Http2Protocol` with ``transport.set_protocol``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Http2Server

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The first bytes of every HTTP/2 connection (RFC 9113 section 3.4)."""


def hand_over(transport: asyncio.BaseTransport, protocol: asyncio.Protocol,
              data: bytes = b"") -> None:
    """Make ``protocol`` the connection's, as if it had been from the start."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if data and not transport.is_closing():
        protocol.data_received(data)


class AlpnChoice(asyncio.Protocol):
    """On a TLS listener: HTTP/2 when the handshake chose ALPN ``h2``, HTTP/1.1 otherwise.

    asyncio calls ``connection_made`` once the handshake is done, so the choice is
    known before any byte of HTTP.
    """

    __slots__ = ("_edge",)

    def __init__(self, edge: Http2Server) -> None:
        self._edge = edge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        edge = self._edge
        hand_over(transport, edge.protocol() if alpn == "h2" else edge.server())


class PrefaceSniffer(asyncio.Protocol):
    """On a plain listener with ``h2c``: HTTP/2 when the first bytes are the client
    preface (prior knowledge, RFC 9113 section 3.3), HTTP/1.1 otherwise.

    An HTTP/1.1 request differs from the preface by its first or second byte, so
    it is handed over at once. A connection that does not say which within
    ``gateway.header_timeout`` is closed without an answer.
    """

    __slots__ = ("_buffer", "_edge", "_timer", "_transport")

    def __init__(self, edge: Http2Server) -> None:
        self._edge = edge
        self._buffer = b""
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(
            self._edge.settings.header_timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        known = min(len(buffer), len(PREFACE))
        if buffer[:known] != PREFACE[:known]:
            self._switch(self._edge.server(), buffer)
        elif known == len(PREFACE):
            self._switch(self._edge.protocol(), buffer)
        else:
            self._buffer = buffer

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_timer()

    def _switch(self, protocol: asyncio.Protocol, data: bytes) -> None:
        self._stop_timer()
        self._buffer = b""
        assert self._transport is not None
        hand_over(self._transport, protocol, data)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["PREFACE", "AlpnChoice", "PrefaceSniffer", "hand_over"]
