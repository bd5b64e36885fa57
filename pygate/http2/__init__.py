"""HTTP/2 at the edge (PRODUCT.md section 10): ALPN ``h2`` over TLS, and h2c with prior
knowledge on a plain listener (``gateway.h2c``).

Every stream goes through the same ``Pipeline.handle`` as an HTTP/1.1 request, so an
HTTP/2 request is routed, checked, proxied, logged and refused exactly as the same
request over HTTP/1.1 (upstream calls stay HTTP/1.1). The package:

- :mod:`.negotiate`: which protocol a new connection speaks (ALPN, or the client
  preface sniffed from the first bytes; anything else is HTTP/1.1, unchanged);
- :mod:`.connection`: one connection (h2's state machine, limits, timers, GOAWAY);
- :mod:`.stream`: one stream as aiohttp's ``BaseRequest`` wants it (a "protocol",
  a body reader acknowledging DATA as it is read, a flow-controlled writer);
- :mod:`.request`: a request head as HTTP/1.1's parser would have built it;
- :mod:`.limits`: the numbers a connection is held to.

:func:`protocol_factory` is what :mod:`pygate.server` gives the listener
(:class:`pygate.listener.AcceptSite`); with neither ``h2c`` nor ALPN ``h2`` it is
``None``, and connections get the HTTP/1.1 server itself, at no cost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from .connection import Http2Protocol
from .negotiate import AlpnChoice, PrefaceSniffer

if TYPE_CHECKING:
    from ..config.models import GatewaySection
    from ..listener import ProtocolFactory
    from ..protocol import GatewayServer


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """What new HTTP/2 connections are held to (a reload replaces it; open
    connections keep theirs)."""

    max_concurrent_streams: int = 100
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0

    @classmethod
    def of(cls, gateway: GatewaySection) -> Http2Settings:
        return cls(max_concurrent_streams=gateway.max_concurrent_streams,
                   header_timeout=gateway.header_timeout,
                   keepalive_timeout=gateway.keepalive_timeout)


class Http2Server:
    """HTTP/2 on one gateway's listener: the settings for new connections, the open
    connections (for the drain), and the protocols new connections get.

    :param server: the HTTP/1.1 server: its ``request_handler`` (``Pipeline.handle``)
        serves every stream, its ``on_refused`` logs the requests refused before it.
    """

    def __init__(self, server: GatewayServer, settings: Http2Settings) -> None:
        self.server = server
        self.handler = server.request_handler
        self.settings = settings
        self.connections: set[Http2Protocol] = set()
        self.draining = False

    def protocol(self) -> Http2Protocol:
        """The protocol of a connection known to speak HTTP/2."""
        return Http2Protocol(self)

    def factory(self, *, tls: bool) -> ProtocolFactory:
        """The listener's protocol factory: ALPN's choice over TLS, the preface's on h2c."""
        return partial(AlpnChoice, self) if tls else partial(PrefaceSniffer, self)

    def update(self, settings: Http2Settings) -> None:
        """A reload: connections opened from now on get ``settings``."""
        self.settings = settings

    def drain(self) -> None:
        """GOAWAY on every connection: streams in flight finish, new ones are refused,
        idle connections close now and busy ones once their last stream is done."""
        self.draining = True
        for connection in list(self.connections):
            connection.goaway()

    async def shutdown(self, within: float) -> None:
        """The end of a drain: the streams still running are cancelled (within
        ``within`` seconds), and every connection closes."""
        self.drain()
        tasks = [stream.task for connection in self.connections
                 for stream in connection.streams.values()
                 if stream.task is not None and not stream.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        for connection in list(self.connections):
            connection.abort()


def protocol_factory(server: GatewayServer, gateway: GatewaySection, *, tls: bool,
                     http2: bool, edge: Http2Server | None = None
                     ) -> tuple[ProtocolFactory | None, Http2Server | None]:
    """The listener's protocol factory, and the HTTP/2 side behind it.

    The factory is None when the listener speaks HTTP/1.1 only: connections then
    get the HTTP/1.1 server itself, at no cost.

    :param server: the HTTP/1.1 server (:func:`pygate.protocol.make_server`).
    :param gateway: ``[gateway]``: ``h2c``, ``max_concurrent_streams``, the timeouts.
    :param tls: the listener speaks TLS; ``http2``: its ALPN offers ``h2``
        (``gateway.tls.http2``). Over TLS, ``h2c`` does not apply.
    :param edge: the HTTP/2 side already serving (a reload): kept (its open
        connections still drain through it), with the new settings.
    """
    settings = Http2Settings.of(gateway)
    if edge is not None:
        edge.update(settings)
    if not (http2 if tls else gateway.h2c):
        return None, edge
    if edge is None:
        edge = Http2Server(server, settings)
    return edge.factory(tls=tls), edge


__all__ = ["Http2Protocol", "Http2Server", "Http2Settings", "protocol_factory"]
