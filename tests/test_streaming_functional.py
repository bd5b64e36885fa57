"""Streaming responses end to end, and clients that leave in the middle of one.

PRODUCT.md section 4: chunked responses and Server-Sent Events reach the client
as the upstream sends them; section 8: connection pools to upstreams stay
bounded. A client that disconnects mid-response must cancel its upstream
request and give the pooled connection back, whether the upstream is busy
writing or idle between two events.

The gateway runs in-process (``pygate_gateway``), and once as a real
``pygate serve`` process; the upstreams are loopback aiohttp servers built here
with ``handler_cancellation`` on, so that an upstream handler notices (by being
cancelled) when the gateway drops its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pygate import Context, Forbidden, hookimpl
from pygate.testing import TestGateway as RunningGateway
from tests.conftest import GatewayFactory, Recorder

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GatewayStarter = Callable[..., Awaitable[RunningGateway]]
WAIT = 5.0  # upper bound for every awaited event; passing runs take milliseconds


@dataclass
class StreamingUpstream:
    url: str
    runner: web.AppRunner

    @property
    def open_connections(self) -> int:
        """Connections from the gateway that this upstream currently holds open."""
        server = self.runner.server
        assert server is not None
        return len(server.connections)


@pytest.fixture
async def streaming_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[StreamingUpstream]]]:
    """Factory: a loopback upstream whose handlers are cancelled when the peer leaves."""
    runners: list[web.AppRunner] = []

    async def factory(handler: Handler) -> StreamingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return StreamingUpstream(f"http://127.0.0.1:{runner.addresses[0][1]}", runner)

    yield factory
    for runner in runners:
        await runner.cleanup()


class ResponseStamp:
    """An in-test plugin with a ``post_response`` hook: streaming must survive it."""

    PRIORITY = 10

    @hookimpl
    def post_response(self, ctx: Context, response: web.StreamResponse) -> None:
        response.headers["X-Stamped"] = "yes"


def config(upstream_url: str, *, plugin: str | None = None, **upstream: Any
           ) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "events", "path": "/events", "upstream": "events"}
    if plugin is not None:
        route["plugins"] = {plugin: {}}
    return {"upstreams": {"events": {"targets": [upstream_url], **upstream}}, "routes": [route]}


async def read_until(response: aiohttp.ClientResponse, end: bytes) -> bytes:
    """Read from a streamed body until ``end`` has arrived (bounded by WAIT)."""
    got = b""
    while not got.endswith(end):
        chunk = await asyncio.wait_for(response.content.readany(), WAIT)
        assert chunk, f"the body ended before {end!r}: {got!r}"
        got += chunk
    return got


# ---------------------------------------------------------------------------
# Incremental arrival
# ---------------------------------------------------------------------------


async def test_sse_events_arrive_one_by_one_while_the_upstream_is_still_sending(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    """The upstream writes event n+1 only after the client has read event n."""
    read: list[asyncio.Event] = [asyncio.Event() for _ in range(3)]
    written: list[int] = []

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for number, client_read in enumerate(read):
            await response.write(f"id: {number}\ndata: event {number}\n\n".encode())
            written.append(number)
            await asyncio.wait_for(client_read.wait(), WAIT)
        await response.write_eof()
        return response

    up = await streaming_upstream(events)
    gw = await pygate_gateway(config(up.url, plugin="stamp"), plugins={"stamp": ResponseStamp()})
    async with gw.session.get(gw.url + "/events/live",
                              headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Stamped"] == "yes"
        assert "Content-Length" not in response.headers
        for number, client_read in enumerate(read):
            got = await read_until(response, b"\n\n")
            assert got == f"id: {number}\ndata: event {number}\n\n".encode()
            # The upstream is still waiting for us: it has not written the next one.
            assert written == list(range(number + 1))
            client_read.set()
        assert await asyncio.wait_for(response.read(), WAIT) == b""


async def test_chunked_response_chunks_arrive_one_by_one(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    read: list[asyncio.Event] = [asyncio.Event() for _ in range(3)]

    async def chunks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for number, client_read in enumerate(read):
            await response.write(b'{"n": %d}\n' % number)
            await asyncio.wait_for(client_read.wait(), WAIT)
        await response.write_eof()
        return response

    up = await streaming_upstream(chunks)
    gw = await pygate_gateway(config(up.url, plugin="stamp"), plugins={"stamp": ResponseStamp()})
    async with gw.session.get(gw.url + "/events/feed") as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        for number, client_read in enumerate(read):
            assert await read_until(response, b"\n") == b'{"n": %d}\n' % number
            client_read.set()
        assert await asyncio.wait_for(response.read(), WAIT) == b""


# ---------------------------------------------------------------------------
# Clients that leave mid-response
# ---------------------------------------------------------------------------


async def test_client_leaving_an_idle_event_stream_cancels_the_upstream_request(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    """Between two events the upstream sends nothing; the client leaves in that gap.

    With one pooled connection allowed, a connection that stayed with a departed
    client would block every later request: the next streams must get through.
    """
    cancelled: list[asyncio.Event] = []
    never = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/ping"):
            return web.Response(text="pong")
        gone = asyncio.Event()
        cancelled.append(gone)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: hello\n\n")
        try:
            await never.wait()  # the next event would come much later
        except asyncio.CancelledError:
            gone.set()
            raise
        return response

    up = await streaming_upstream(events)
    gw = await pygate_gateway(config(up.url, max_connections=1))
    for attempt in range(3):
        async with aiohttp.ClientSession() as client:
            response = await client.get(gw.url + "/events/live")
            assert response.status == 200
            assert await read_until(response, b"\n\n") == b"data: hello\n\n"
            response.close()  # the client goes away without reading on
        await asyncio.wait_for(cancelled[attempt].wait(), WAIT)
        async with gw.session.get(gw.url + "/events/ping") as pong:
            assert pong.status == 200
            assert await pong.text() == "pong"
    assert up.open_connections <= 1


async def test_client_leaving_a_busy_download_stops_the_upstream_writing(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    write_failed = asyncio.Event()
    block = b"z" * 65536

    async def download(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/ping"):
            return web.Response(text="pong")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            while True:  # an endless body: only the client leaving ends it
                await response.write(block)
        except (ConnectionError, asyncio.CancelledError):
            write_failed.set()
            raise

    up = await streaming_upstream(download)
    gw = await pygate_gateway(config(up.url, max_connections=1))
    async with aiohttp.ClientSession() as client:
        response = await client.get(gw.url + "/events/file")
        assert response.status == 200
        received = 0
        while received < 1024 * 1024:
            received += len(await asyncio.wait_for(response.content.readany(), WAIT))
        response.close()
    await asyncio.wait_for(write_failed.wait(), WAIT)
    async with gw.session.get(gw.url + "/events/ping") as pong:
        assert await pong.text() == "pong"
    assert up.open_connections <= 1


async def test_client_leaving_before_the_upstream_answers_frees_the_connection(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    """The client gives up while the upstream is still thinking about the headers."""
    arrived = asyncio.Event()
    cancelled = asyncio.Event()
    never = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/ping"):
            return web.Response(text="pong")
        arrived.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(text="too late")

    up = await streaming_upstream(slow)
    recorder = Recorder()
    gw = await pygate_gateway(config(up.url, plugin="recorder", max_connections=1),
                              plugins={"recorder": recorder})
    _, writer = await asyncio.open_connection(gw.running.host, gw.running.port)
    writer.write(b"GET /events/slow HTTP/1.1\r\nHost: gw\r\nX-Request-ID: gave-up\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), WAIT)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    await asyncio.wait_for(cancelled.wait(), WAIT)
    # The access log tells it apart from an upstream failure (nginx's 499).
    await asyncio.wait_for(recorder.logged.wait(), WAIT)
    record = recorder.records[-1]
    assert record["request_id"] == "gave-up"
    assert record["status"] == 499
    assert record["error"] == "the client closed the connection"
    async with gw.session.get(gw.url + "/events/ping") as pong:
        assert await pong.text() == "pong"


async def test_client_leaving_as_the_upstream_answers_gives_the_connection_back(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    """The client is gone by the time the response head would be sent.

    The upstream's answer is never written anywhere; its connection must still
    return to the pool (one connection allowed: otherwise every later request
    would wait for it forever).
    """
    arrived = asyncio.Event()
    answer = asyncio.Event()

    async def late(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/ping"):
            return web.Response(text="pong")
        arrived.set()
        await asyncio.wait_for(answer.wait(), WAIT)
        return web.Response(text="nobody reads this")

    up = await streaming_upstream(late)
    gw = await pygate_gateway(config(up.url, max_connections=1))
    for _ in range(3):
        arrived.clear()
        answer.clear()
        _, writer = await asyncio.open_connection(gw.running.host, gw.running.port)
        writer.write(b"GET /events/late HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(arrived.wait(), WAIT)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await asyncio.sleep(0.02)  # the gateway sees the close ...
        answer.set()  # ... before the upstream answers
        async with gw.session.get(gw.url + "/events/ping",
                                  timeout=aiohttp.ClientTimeout(total=WAIT)) as pong:
            assert await pong.text() == "pong"
    assert up.open_connections <= 1


class RefuseResponse:
    """An in-test plugin whose ``post_response`` refuses some proxied responses."""

    PRIORITY = 10

    @hookimpl
    def post_response(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        if request.path.endswith("/refused"):
            raise Forbidden("not for you")


async def test_response_refused_after_the_upstream_answered_gives_the_connection_back(
        pygate_gateway: GatewayStarter, streaming_upstream: Any) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/ping"):
            return web.Response(text="pong")
        return web.Response(body=b"secret" * 20000)  # more than is read ahead

    up = await streaming_upstream(answer)
    gw = await pygate_gateway(config(up.url, plugin="refuse", max_connections=1),
                              plugins={"refuse": RefuseResponse()})
    timeout = aiohttp.ClientTimeout(total=WAIT)
    for _ in range(3):
        async with gw.session.get(gw.url + "/events/refused", timeout=timeout) as refused:
            assert refused.status == 403
            assert refused.headers["Content-Type"] == "application/problem+json"
            assert b"secret" not in await refused.read()
        async with gw.session.get(gw.url + "/events/ping", timeout=timeout) as pong:
            assert await pong.text() == "pong"


async def test_pygate_serve_frees_the_upstream_when_an_event_stream_client_leaves(
        streaming_upstream: Any, gateway_process: GatewayFactory) -> None:
    """The same through a real ``pygate serve`` process (and its event loop)."""
    cancelled = asyncio.Event()
    never = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: hello\n\n")
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return response

    up = await streaming_upstream(events)
    gw = await gateway_process(f"""
[upstreams.events]
targets = ["{up.url}"]
max_connections = 1

[[routes]]
name = "events"
path = "/events"
upstream = "events"
""")
    async with aiohttp.ClientSession() as client:
        response = await client.get(gw.url + "/events/live")
        assert await read_until(response, b"\n\n") == b"data: hello\n\n"
        response.close()
    await asyncio.wait_for(cancelled.wait(), WAIT)
    assert up.open_connections == 0
    assert "Traceback" not in gw.stderr()
