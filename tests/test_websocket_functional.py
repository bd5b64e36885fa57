"""WebSocket proxying end to end: a client, the gateway and an upstream, all real servers.

PRODUCT.md section 4 ("WebSocket upgrades are proxied both ways with close
codes kept") and section 8: messages both ways, close codes and reasons in
both directions, subprotocol negotiation, the plugin chain before the upgrade,
upstream refusals as problem documents, message size limits, a side that
vanishes, and SIGTERM closing open WebSockets with 1001 within drain_timeout.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from pygate import Context, Forbidden, Identity, Unauthorized, UpstreamRequest, hookimpl
from pygate.testing import TestGateway as RunningGateway
from tests.conftest import (
    GatewayFactory,
    Recorder,
    Upstream,
    UpstreamFactory,
    free_port,
    problem,
)

GatewayStarter = Callable[..., Awaitable[RunningGateway]]
WAIT = 5.0  # upper bound for every awaited event; passing runs take milliseconds
# What the test upstream answers to a close frame: not an echo, so that the
# client can tell that the answer it gets is the upstream's.
UPSTREAM_ANSWER = 4100


@dataclass
class WsUpstream:
    """What a WebSocket upstream saw: close frames received and the answers to its own."""

    http: Upstream
    closes: list[tuple[int, str]] = field(default_factory=list)
    answers: list[int | None] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return self.http.url


async def ws_upstream(upstream: UpstreamFactory) -> WsUpstream:
    """An echo service: ``echo: TEXT``, binary reversed; ``close-me`` and ``vanish`` on demand.

    ``/deny`` refuses the upgrade with 403, ``/plain`` answers like a plain HTTP
    endpoint (200, no upgrade).
    """
    state: list[WsUpstream] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen = state[0]
        if request.path.endswith("/deny"):
            raise web.HTTPForbidden(text="no sockets for you",
                                    headers={"WWW-Authenticate": 'Bearer realm="chat"'})
        if request.path.endswith("/plain"):
            return web.json_response({"hello": "http"})
        ws = web.WebSocketResponse(protocols=("v1.chat",), autoclose=False)
        await ws.prepare(request)
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    if msg.data == "close-me":
                        await ws.close(code=4002, message=b"upstream done")
                        seen.answers.append(ws.close_code)
                        break
                    if msg.data == "vanish":
                        assert request.transport is not None
                        request.transport.close()  # no close frame
                        break
                    await ws.send_str(f"echo: {msg.data}")
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
                elif msg.type is WSMsgType.CLOSE:
                    seen.closes.append((msg.data, msg.extra or ""))
                    await ws.close(code=UPSTREAM_ANSWER)
                    break
                else:
                    seen.closes.append((ws.close_code or 0, f"ended: {msg.type.name}"))
                    break
        finally:
            seen.ended.set()
        return ws

    http = await upstream(handler)
    state.append(WsUpstream(http))
    return state[0]


def gateway_config(url: str, *, plugins: dict[str, Any] | None = None,
                   **gateway: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "chat", "path": "/chat", "upstream": "chat"}
    if plugins:
        route["plugins"] = plugins
    return {
        "gateway": gateway,
        "upstreams": {"chat": {"targets": [url], "max_connections": 1}},
        "routes": [route],
    }


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), WAIT)


# ---------------------------------------------------------------------------
# Messages and close codes
# ---------------------------------------------------------------------------


async def test_messages_and_close_codes_pass_both_ways(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    up = await ws_upstream(upstream)
    recorder = Recorder()
    gw = await pygate_gateway(gateway_config(up.url, plugins={"recorder": {}}),
                              plugins={"recorder": recorder})
    session = gw.session

    # Client-initiated close. The upstream pool holds one connection only: the
    # second WebSocket below gets through only if the first one gave it back.
    async with session.ws_connect(gw.url + "/chat/room", autoping=False,
                                  headers={"X-Request-ID": "ws-one"}) as ws:
        await ws.send_str("hello")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo: hello")
        await ws.send_bytes(b"\x00\x01\xfe\xff")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\xff\xfe\x01\x00")
        # Ping and pong are answered by the gateway on the client's leg.
        await ws.ping(b"are you there")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
        await asyncio.wait_for(ws.close(code=4001, message=b"bye"), WAIT)
        assert ws.close_code == UPSTREAM_ANSWER
    await asyncio.wait_for(up.ended.wait(), WAIT)
    assert up.closes == [(4001, "bye")]

    await asyncio.wait_for(recorder.logged.wait(), WAIT)
    record = recorder.records[-1]
    assert record["status"] == 101
    assert record["request_id"] == "ws-one"
    assert record["route"] == "chat"
    assert record["bytes_in"] == len("hello") + 4
    assert record["bytes_out"] == len("echo: hello") + 4

    # Upstream-initiated close.
    up.ended.clear()
    async with session.ws_connect(gw.url + "/chat/room") as ws:
        await ws.send_str("close-me")
        msg = await receive(ws)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "upstream done")
    await asyncio.wait_for(up.ended.wait(), WAIT)
    assert up.answers == [4002]


async def test_subprotocol_is_negotiated_with_the_upstream(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    up = await ws_upstream(upstream)
    gw = await pygate_gateway(gateway_config(up.url))
    cases = [(("v2.chat", "v1.chat"), "v1.chat"), (("v3.chat",), None), ((), None)]
    for offered, chosen in cases:
        async with gw.session.ws_connect(gw.url + "/chat", protocols=offered) as ws:
            assert ws.protocol == chosen, offered
            await ws.send_str("hi")
            assert (await receive(ws)).data == "echo: hi"
        sent = up.http.last.headers.get("Sec-WebSocket-Protocol")
        assert sent == (",".join(offered) if offered else None)


# ---------------------------------------------------------------------------
# The plugin chain before the upgrade
# ---------------------------------------------------------------------------


class TicketCheck:
    """Authenticates ``X-Ticket``, refuses user ``mallory``, names the user upstream."""

    PRIORITY = 50

    @hookimpl
    def authenticate(self, request: web.BaseRequest) -> Identity:
        ticket = request.headers.get("X-Ticket")
        if not ticket:
            raise Unauthorized("a ticket is required",
                               headers={"WWW-Authenticate": 'Ticket realm="chat"'})
        return Identity(id=ticket, source="ticket")

    @hookimpl
    def admit(self, ctx: Context) -> None:
        if ctx.identity is not None and ctx.identity.id == "mallory":
            raise Forbidden("not in this room")

    @hookimpl
    def transform_request(self, ctx: Context, upstream_request: UpstreamRequest) -> None:
        assert ctx.identity is not None
        upstream_request.headers["X-User"] = ctx.identity.id


UPGRADE_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket",
                   "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def test_authentication_and_admission_run_before_the_upgrade(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    up = await ws_upstream(upstream)
    gw = await pygate_gateway(gateway_config(up.url, plugins={"ticket": {}}),
                              plugins={"ticket": TicketCheck()})

    for headers, status in (({}, 401), ({"X-Ticket": "mallory"}, 403)):
        async with gw.session.get(gw.url + "/chat", headers={**UPGRADE_HEADERS, **headers}
                                  ) as response:
            assert response.status == status
            assert response.headers["Content-Type"] == "application/problem+json"
            assert "Upgrade" not in response.headers
            assert "Sec-WebSocket-Accept" not in response.headers
            doc = problem(await response.read())
            assert doc["status"] == status and doc["route"] == "chat"
            if status == 401:
                assert response.headers["WWW-Authenticate"] == 'Ticket realm="chat"'
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.session.ws_connect(gw.url + "/chat", headers=headers)
        assert refused.value.status == status
    assert up.http.seen == []

    async with gw.session.ws_connect(gw.url + "/chat", headers={"X-Ticket": "ann"}) as ws:
        await ws.send_str("hi")
        assert (await receive(ws)).data == "echo: hi"
    seen = up.http.last.headers
    assert seen["X-User"] == "ann"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["Upgrade"].lower() == "websocket"  # the gateway's own handshake
    assert seen["Sec-WebSocket-Key"] != UPGRADE_HEADERS["Sec-WebSocket-Key"]


# ---------------------------------------------------------------------------
# Upstream refusals and failures
# ---------------------------------------------------------------------------


async def test_upstream_refusing_the_upgrade_is_a_problem_document(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    up = await ws_upstream(upstream)
    dead = free_port()
    gw = await pygate_gateway({
        "routes": [{"name": "chat", "path": "/chat", "upstream": up.url},
                   {"name": "dead", "path": "/dead", "upstream": f"http://127.0.0.1:{dead}"}],
    })
    cases = [("/chat/deny", 403, "refused the WebSocket upgrade"),
             ("/chat/plain", 502, "did not accept the WebSocket upgrade"),
             ("/dead", 502, "refused the connection")]
    for path, status, detail in cases:
        async with gw.session.get(gw.url + path, headers=UPGRADE_HEADERS) as response:
            assert response.status == status, path
            assert response.headers["Content-Type"] == "application/problem+json"
            body = await response.read()
            doc = problem(body)
            assert doc["status"] == status and detail in doc["detail"], doc
            text = body.decode()
            assert "127.0.0.1" not in text and str(up.http.port) not in text, text
            if status == 403:
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="chat"'
    # A malformed client handshake is refused before the upstream is contacted.
    before = len(up.http.seen)
    async with gw.session.get(gw.url + "/chat", headers={
            **UPGRADE_HEADERS, "Sec-WebSocket-Version": "12"}) as response:
        assert response.status == 400
        assert problem(await response.read())["status"] == 400
    assert len(up.http.seen) == before
    # A refused upgrade leaves nothing behind: the next one works.
    async with gw.session.ws_connect(gw.url + "/chat") as ws:
        await ws.send_str("still here")
        assert (await receive(ws)).data == "echo: still here"


async def test_upgrades_follow_the_hash_balancer_header_and_feed_the_breaker(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    """``hash_on = "header:..."`` keeps a room on one target; refused upgrades open a breaker."""
    first, second = await ws_upstream(upstream), await ws_upstream(upstream)
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await pygate_gateway({"upstreams": {
        "rooms": {"targets": [first.url, second.url], "balancer": "hash",
                  "hash_on": "header:X-Room"},
        "flaky": {"targets": [dead, second.url], "breaker": {"failures": 2, "cooldown": "60s"}},
    }, "routes": [{"name": "rooms", "path": "/rooms", "upstream": "rooms"},
                  {"name": "flaky", "path": "/flaky", "upstream": "flaky"}]})
    ups = (first, second)
    homes: dict[str, int] = {}
    for attempt in range(3):
        for room in ("red", "green", "blue", "amber", "teal", "plum"):
            before = [len(up.http.seen) for up in ups]
            async with gw.session.ws_connect(gw.url + "/rooms/" + room,
                                             headers={"X-Room": room}) as ws:
                await ws.send_str(room)
                assert (await receive(ws)).data == f"echo: {room}"
            home = next(i for i, up in enumerate(ups) if len(up.http.seen) > before[i])
            assert homes.setdefault(room, home) == home, (room, attempt)
    assert set(homes.values()) == {0, 1}, homes  # six rooms do not all land on one target

    # Round-robin over a dead target and a live one: the dead one fails twice, its
    # breaker opens, and from then on every upgrade goes to the live one.
    outcomes = []
    for _ in range(8):
        try:
            async with gw.session.ws_connect(gw.url + "/flaky") as ws:
                await ws.send_str("hi")
                assert (await receive(ws)).data == "echo: hi"
                outcomes.append("ok")
        except aiohttp.WSServerHandshakeError as refused:
            assert refused.status == 502
            outcomes.append("502")
    assert outcomes.count("502") == 2, outcomes
    assert outcomes[-4:] == ["ok"] * 4, outcomes


async def test_oversized_message_closes_both_sides_with_1009(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    up = await ws_upstream(upstream)
    gw = await pygate_gateway(gateway_config(up.url, max_body="1KB"))
    async with gw.session.ws_connect(gw.url + "/chat") as ws:
        await ws.send_str("x" * 1000)
        assert (await receive(ws)).data == "echo: " + "x" * 1000
        await ws.send_str("x" * 2048)
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    await asyncio.wait_for(up.ended.wait(), WAIT)
    assert [code for code, _ in up.closes] == [1009]


async def test_a_side_vanishing_without_a_close_frame_closes_the_other(
        pygate_gateway: GatewayStarter, upstream: UpstreamFactory) -> None:
    up = await ws_upstream(upstream)
    gw = await pygate_gateway(gateway_config(up.url))

    # The upstream drops its connection: the client gets 1014 (bad gateway).
    async with gw.session.ws_connect(gw.url + "/chat") as ws:
        await ws.send_str("vanish")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1014)

    # The client drops its connection: the upstream gets 1001 (going away).
    up.ended.clear()
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(gw.url + "/chat")
        await ws.send_str("hi")
        assert (await receive(ws)).data == "echo: hi"
    # Leaving the session closed its connections without any close frame.
    await asyncio.wait_for(up.ended.wait(), WAIT)
    assert up.closes[-1][0] == 1001


# ---------------------------------------------------------------------------
# Drain
# ---------------------------------------------------------------------------


async def test_sigterm_closes_open_websockets_with_1001_and_exits_within_drain_timeout(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await ws_upstream(upstream)
    gw = await gateway_process(f"""
[gateway]
drain_timeout = "5s"

[[routes]]
name = "chat"
path = "/chat"
upstream = "{up.url}"
""")
    sockets = [await http.ws_connect(gw.url + "/chat") for _ in range(2)]
    for ws in sockets:
        await ws.send_str("before")
        assert (await receive(ws)).data == "echo: before"

    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    for ws in sockets:
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert msg.extra == "the gateway is shutting down"
        await ws.close()
    code = await gw.exit_code(within=5.0)
    elapsed = time.monotonic() - started
    assert code == 0, gw.stderr()
    assert elapsed < 5.0, f"exited {elapsed:.2f}s after SIGTERM with drain_timeout 5s"
    assert [c for c, _ in up.closes] == [1001, 1001]
    assert "Traceback" not in gw.stderr()
