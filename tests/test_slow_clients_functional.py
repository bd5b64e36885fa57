"""Slow and idle clients, and the drain (PRODUCT.md section 4, item 9).

A request head trickled a byte at a time gets 408 once ``gateway.header_timeout``
has passed, however busy the trickle; a connection that sends nothing is closed
without an answer; an idle kept-alive connection closes after
``gateway.keepalive_timeout``. During a drain every response carries
``Connection: close`` and idle connections close at once.
"""

from __future__ import annotations

import asyncio
import signal
import time

from aiohttp import web

from tests.conftest import GatewayFactory, UpstreamFactory, echo, parse_responses, problem


def config(upstream_url: str, **gateway: str) -> str:
    lines = ["[gateway]", *(f'{key} = "{value}"' for key, value in gateway.items())]
    return "\n".join(lines) + f"""

[[routes]]
name = "api"
path = "/api"
upstream = "{upstream_url}"
"""


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """Everything read until the server closes, and when (monotonic); fails after ``within``."""
    data = b""
    async with asyncio.timeout(within):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return data, time.monotonic()
            data += chunk


async def test_trickled_request_head_gets_408_after_header_timeout(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, header_timeout="1s"))

    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /api/slow HTTP/1.1\r\nHost: gw\r\nX-Slow: ":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)  # a byte every 50 ms: never idle, never done

    trickling = asyncio.create_task(trickle())
    try:
        data, closed_at = await read_until_closed(reader, within=5)
    finally:
        trickling.cancel()
        writer.close()
    assert 0.9 <= closed_at - started <= 2.5, closed_at - started
    [response] = parse_responses(data)
    assert response.status == 408
    assert problem(response.body)["status"] == 408
    assert response.headers["Connection"] == "close"
    assert up.seen == []
    assert "Traceback" not in gw.stderr()


async def test_silent_connection_closed_without_an_answer(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, header_timeout="1s"))

    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = time.monotonic()
    data, closed_at = await read_until_closed(reader, within=5)
    writer.close()
    assert data == b""
    assert 0.9 <= closed_at - started <= 2.5


async def test_second_request_head_on_a_kept_alive_connection_is_timed_too(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, header_timeout="1s"))

    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /api/one HTTP/1.1\r\nHost: gw\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(1.5)  # idle longer than header_timeout: that is keep-alive's business
    writer.write(b"GET /api/two HTTP/1.1\r\n")  # ...then a head that never ends
    started = time.monotonic()
    data, closed_at = await read_until_closed(reader, within=5)
    writer.close()
    assert b"HTTP/1.1 408" in data
    assert closed_at - started <= 2.5
    assert [seen.path for seen in up.seen] == ["/one"]


async def test_idle_keepalive_connection_closes_after_keepalive_timeout(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, keepalive_timeout="1s", header_timeout="10s"))

    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /api/one HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    answered = time.monotonic()
    _, closed_at = await read_until_closed(reader, within=5)
    writer.close()
    assert 0.8 <= closed_at - answered <= 2.5, closed_at - answered


async def test_drain_closes_idle_connections_at_once_and_busy_ones_after_their_response(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/slow":
            arrived.set()
            await release.wait()
        return web.Response(text="done")

    up = await upstream(slow)
    gw = await gateway_process(config(up.url, drain_timeout="10s"))

    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    idle_writer.write(b"GET /api/fast HTTP/1.1\r\nHost: gw\r\n\r\n")
    first = await asyncio.wait_for(idle_reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
    await idle_reader.readexactly(4)  # "done"

    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    busy_writer.write(b"GET /api/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.wait_for(arrived.wait(), 5)

    gw.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    data, closed_at = await read_until_closed(idle_reader, within=3)
    assert data == b""
    assert closed_at - signalled < 0.5, closed_at - signalled

    release.set()
    data, _ = await read_until_closed(busy_reader, within=5)
    [response] = parse_responses(data)
    assert response.status == 200 and response.body == b"done"
    assert response.headers["Connection"] == "close"
    idle_writer.close()
    busy_writer.close()
    assert await gw.exit_code(within=10) == 0
