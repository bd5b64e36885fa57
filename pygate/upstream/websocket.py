"""WebSocket proxying: the upgrade, two message pumps, close codes both ways, drain.

A WebSocket request meets the same chain as any other request (``pre_route``,
``authenticate``, ``admit``, ``transform_request``): :func:`connect` runs only
after them, so a refused request gets its problem document and no upgrade.
:func:`connect` opens the upstream WebSocket first (its refusal becomes a
problem document with the upstream's status, 502 for a connection failure or a
failed TLS handshake, 504 when it does not answer within ``gateway.timeout``;
a ``wss://`` target gets its upstream's TLS settings, as proxied requests do),
then returns the client's
unsent ``101`` response and a streamer: ``post_response`` hooks still see the
response before the handshake goes out, and the streamer pumps messages both
ways once it has.

Text and binary messages are relayed as they are; ping and pong are answered on
each leg by aiohttp (autoping), not relayed. A close frame is relayed with its
code and reason, and the other side's answer goes back with its code. A side
that vanishes without a close frame closes the other one with 1001 (client
gone) or 1014 (upstream gone). Messages above ``gateway.max_body`` close the
connection with 1009. On drain every proxied WebSocket of the gateway is
closed with 1001 both ways (:class:`OpenSockets`).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from ..context import Context, UpstreamRequest
from ..errors import BadGateway, BadRequest, GatewayError, GatewayTimeout, ServiceUnavailable
from ..sanitize import strip_hop_by_hop
from . import Target, Upstream
from .client import head_problem
from .forward import Streamer, refused_head, target_url
from .tls import handshake_failure

if TYPE_CHECKING:
    from ..app import Gateway

log = structlog.get_logger("pygate")

# How long a side may take to answer a close frame before its connection is cut.
CLOSE_TIMEOUT = 5.0
# Where a gateway keeps its open WebSockets (Gateway.state).
STATE_KEY = "pygate.websockets"
# The client's handshake headers: the gateway makes its own upstream.
HANDSHAKE_HEADERS = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
    "Content-Length",
)
# Upstream refusal headers worth passing on with the problem document.
REFUSAL_HEADERS = ("WWW-Authenticate", "Retry-After")
# Close codes that must never be sent in a close frame (RFC 6455 section 7.4.1).
UNSENDABLE = frozenset({1004, 1005, 1006, 1015})
GOING_AWAY = b"the gateway is shutting down"

AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


def is_upgrade(request: web.BaseRequest) -> bool:
    """A GET asking to switch to the WebSocket protocol (``Connection: upgrade``)."""
    headers = request.headers
    if request.method != "GET" or headers.get("Upgrade", "").strip().lower() != "websocket":
        return False
    return any(token.strip().lower() == "upgrade"
               for value in headers.getall("Connection", ()) for token in value.split(","))


_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def valid_key(key: str) -> bool:
    """A ``Sec-WebSocket-Key`` as RFC 6455 section 4.1 has it: 16 bytes in base64.

    Checked before aiohttp's handshake, which lets a key with non-ASCII
    characters raise instead of refusing it.
    """
    return bool(_KEY.fullmatch(key.strip()))


def offered_protocols(request: web.BaseRequest) -> list[str]:
    """The subprotocols the client offers (``Sec-WebSocket-Protocol``), in its order."""
    return [token.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", ())
            for token in value.split(",") if token.strip()]


def ws_url(target: Target, upstream_request: UpstreamRequest) -> URL:
    """The target's URL for this request, in ``ws://`` (or ``wss://``) form."""
    url = target_url(target, upstream_request)
    return url.with_scheme("wss" if url.scheme == "https" else "ws")


def sendable(code: int | None, fallback: int) -> int:
    """``code`` when it may go into a close frame, else ``fallback``."""
    if code is None or code in UNSENDABLE or not (1000 <= code <= 4999):
        return fallback
    return code


class OpenSockets:
    """The proxied WebSockets of one gateway, so that a drain can close them."""

    def __init__(self) -> None:
        self.bridges: set[Bridge] = set()
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task that is kept alive until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def going_away(self) -> None:
        """Close every open WebSocket with 1001 both ways (``Gateway.on_drain``).

        Returns once the closes have started; each proxied request ends when
        both sides have answered (or after :data:`CLOSE_TIMEOUT`), which the
        drain waits for like any in-flight request.
        """
        self.draining = True
        for bridge in list(self.bridges):
            bridge.going_away()


def open_sockets(gateway: Gateway) -> OpenSockets:
    """The gateway's :class:`OpenSockets`, registered with its drain on first use."""
    sockets = gateway.state.get(STATE_KEY)
    if not isinstance(sockets, OpenSockets):
        sockets = gateway.state[STATE_KEY] = OpenSockets()
        gateway.on_drain.append(sockets.going_away)
    return sockets


async def connect(
    request: web.BaseRequest,
    ctx: Context,
    upstream: Upstream,
    upstream_request: UpstreamRequest,
    gateway: Gateway,
    *,
    deadline: float,
) -> tuple[web.StreamResponse, Streamer]:
    """Open the upstream WebSocket; return the client's unsent 101 and its pump.

    :param deadline: loop time by which the upstream must have accepted (504).
    :raise GatewayError: 400 for a malformed client handshake; the upstream's
        status when it refuses the upgrade (502 when that is not an error
        status); 502 when it cannot be reached; 503 during a drain or without
        a healthy target; 504 when it does not answer in time.
    """
    sockets = open_sockets(gateway)
    if sockets.draining:
        raise ServiceUnavailable("the gateway is shutting down")
    version = request.headers.get("Sec-WebSocket-Version")
    if version is not None and version.strip() != "13":
        # refused before aiohttp's handshake (which fails on a non-ASCII version); the
        # refusal names the version spoken, as RFC 6455 section 4.4 asks
        raise BadRequest("malformed WebSocket handshake: the gateway speaks version 13",
                         headers={"Sec-WebSocket-Version": "13"})
    if version is None or not valid_key(request.headers.get("Sec-WebSocket-Key", "")) or \
            not web.WebSocketResponse().can_prepare(request):
        raise BadRequest("malformed WebSocket handshake")
    problem = head_problem(upstream_request.method, upstream_request.target,
                           upstream_request.headers)
    if problem is not None:  # a plugin's transform_request broke the head: send nothing
        raise refused_head(upstream_request, ctx, upstream, problem)
    session = gateway.client  # the gateway's one aiohttp session (no cookie jar)
    assert session is not None, "upstream used before the gateway started"
    max_size = gateway.max_body
    headers = CIMultiDict(upstream_request.headers)
    target = upstream.pick(ctx, headers=headers)  # before the handshake headers go
    ctx.target = target.label
    strip_hop_by_hop(headers)
    for name in HANDSHAKE_HEADERS:
        headers.popall(name, None)
    tls = upstream.tls if target.url.scheme == "https" else None
    target.active += 1
    try:
        async with asyncio.timeout_at(deadline):
            upstream_ws = await session.ws_connect(
                ws_url(target, upstream_request),
                ssl=tls.context if tls is not None else True,
                server_hostname=tls.server_name if tls is not None else None,
                headers=headers,
                protocols=offered_protocols(request),
                autoclose=False,
                autoping=True,
                max_msg_size=max_size,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
    except BaseException as exc:
        target.active -= 1
        if not isinstance(exc, Exception):
            upstream.abandoned(target, ctx)  # cancelled: the client went away
            raise
        blame = _blame(exc)
        if isinstance(exc, aiohttp.ClientSSLError):
            log.warning("upstream TLS handshake failed", request_id=ctx.request_id,
                        upstream=upstream.name, target=target.label, reason=_tls_detail(exc))
        if blame is None:
            upstream.succeeded(target, ctx)
        else:
            upstream.failed(target, ctx, blame)
        raise _refusal(exc, upstream.label) from None
    upstream.succeeded(target, ctx)
    client_ws = web.WebSocketResponse(
        protocols=(upstream_ws.protocol,) if upstream_ws.protocol else (),
        autoclose=False,
        autoping=True,
        max_msg_size=max_size,
        timeout=CLOSE_TIMEOUT,
    )
    bridge = Bridge(client_ws, upstream_ws, ctx, target, sockets)
    sockets.bridges.add(bridge)
    return client_ws, bridge


def _blame(exc: Exception) -> str | None:
    """What a failed upgrade tells the target's breaker, as a proxied request would: None if
    the target answered (it refused the upgrade with a status other than 502/503/504)."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"status {exc.status}" if exc.status in (502, 503, 504) else None
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientSSLError):  # before its base, ClientConnectorError
        return f"TLS handshake failed: {_tls_detail(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused"
    if isinstance(exc, aiohttp.ClientError):
        return "failed the WebSocket upgrade"
    return None


def _tls_detail(exc: aiohttp.ClientSSLError) -> str:
    """Why aiohttp's TLS handshake failed, as the proxy's own client says it."""
    cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
    return handshake_failure(cause) if isinstance(cause, ssl.SSLError) else str(exc)


def _refusal(exc: Exception, label: str) -> GatewayError:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        status = exc.status
        headers = {name: exc.headers[name] for name in REFUSAL_HEADERS
                   if exc.headers is not None and name in exc.headers}
        if status >= 400:
            return GatewayError(f"{label} refused the WebSocket upgrade", status=status,
                                headers=headers)
        return BadGateway(f"{label} did not accept the WebSocket upgrade (status {status})")
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"{label} did not answer in time")
    if isinstance(exc, aiohttp.ClientSSLError):
        return BadGateway(f"{label} failed the TLS handshake")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BadGateway(f"{label} refused the connection")
    if isinstance(exc, aiohttp.ClientError):
        return BadGateway(f"{label} failed the WebSocket upgrade")
    raise exc


class Bridge:
    """One proxied WebSocket: the client's side, the upstream's, and their two pumps."""

    def __init__(self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                 ctx: Context, target: Target, sockets: OpenSockets) -> None:
        self.client = client
        self.upstream = upstream
        self.ctx = ctx
        self.target = target
        self.sockets = sockets
        self.started = False
        self.finished = False
        self._closing: asyncio.Task[None] | None = None

    async def run(self, sent: web.StreamResponse) -> None:
        """The streamer: relay until both sides are closed (the handshake is out)."""
        self.started = True
        ctx = self.ctx
        ctx.status = 101
        loop = asyncio.get_running_loop()
        if self.sockets.draining:
            self.going_away()
        to_upstream = loop.create_task(self._pump(self.client, self.upstream, 1001, True))
        to_client = loop.create_task(self._pump(self.upstream, self.client, 1014, False))
        try:
            await asyncio.gather(to_upstream, to_client)
            if self._closing is not None:
                await self._closing
        except Exception as exc:  # a bug: end this WebSocket, keep serving
            log.error("WebSocket relay failed", request_id=ctx.request_id, exc_info=exc)
            ctx.error = f"WebSocket relay failed: {type(exc).__name__}"
        finally:
            to_upstream.cancel()
            to_client.cancel()
            if not (self.client.closed and self.upstream.closed):
                # Cut when the drain ran out, or the failure above: close in the background.
                self._closing = self.sockets.spawn(
                    self._close_both(WSCloseCode.GOING_AWAY, GOING_AWAY)
                    if self.sockets.draining else
                    self._close_both(WSCloseCode.INTERNAL_ERROR, b""))
            self._finish()

    async def _pump(self, source: AnyWebSocket, sink: AnyWebSocket, gone: int,
                    from_client: bool) -> None:
        """Relay ``source``'s messages to ``sink`` until ``source`` closes, then close ``sink``.

        :param gone: the code for ``sink`` when ``source`` vanished without a close frame.
        """
        ctx = self.ctx
        while True:
            msg = await source.receive()
            kind = msg.type
            try:
                if kind is WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                    size = len(msg.data)
                elif kind is WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                    size = len(msg.data)
                else:
                    break
            except (ConnectionError, aiohttp.ClientError):
                # The sink is gone: its own pump sees that and closes this side.
                return
            if from_client:
                ctx.bytes_in += size
            else:
                ctx.bytes_out += size
        if kind is WSMsgType.CLOSING:
            return  # closed from here (the other pump, or the drain)
        if kind is WSMsgType.CLOSE:
            code = sendable(msg.data, WSCloseCode.OK)
            await sink.close(code=code, message=(msg.extra or "").encode())
            # The client gets the upstream's answer; the upstream gets its own code
            # back (the client side is not waited for: the server closes first).
            await source.close(code=sendable(sink.close_code, code) if from_client else code)
            return
        exc = msg.data if kind is WSMsgType.ERROR else None
        code = sendable(getattr(exc, "code", None), gone)
        ctx.error = ctx.error or (
            f"{'client' if from_client else 'upstream'} WebSocket ended without a close frame"
            if code == gone else f"WebSocket closed with {code}: {exc}")
        await sink.close(code=code)
        if not source.closed:
            await source.close(code=code)

    def going_away(self) -> None:
        """Start closing both sides with 1001 (the gateway is draining).

        A bridge whose handshake is not out yet is closed when it starts (or
        released by :meth:`discard` if it never does).
        """
        if self.started and self._closing is None and not self.finished:
            self._closing = self.sockets.spawn(
                self._close_both(WSCloseCode.GOING_AWAY, GOING_AWAY))

    async def _close_both(self, code: int, reason: bytes) -> None:
        closes = [self.upstream.close(code=code, message=reason)]
        if self.started:
            closes.append(self.client.close(code=code, message=reason))
        results = await asyncio.gather(*closes, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("WebSocket close failed", request_id=self.ctx.request_id,
                            error=f"{type(result).__name__}: {result}")

    async def __call__(self, sent: web.StreamResponse) -> None:
        await self.run(sent)

    def discard(self) -> None:
        """The request ended: release the upstream side if the pumps never ran."""
        if self.started or self.finished:
            return
        self._closing = self.sockets.spawn(self._close_both(WSCloseCode.GOING_AWAY, b""))
        self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.target.active -= 1
            self.sockets.bridges.discard(self)

