"""Upstream bodies that end early are never passed off as complete (PRODUCT.md 4, item 10).

A raw upstream writes a response head and part of its body, then closes or
resets. The client must see a broken message (no last chunk, fewer bytes than
Content-Length, and its connection cut), the access log must say so, and the
cache must not keep any of it. A body delimited by the connection's end is
complete when the upstream closes, and is passed on as such.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from pygate.testing import start_gateway
from tests.conftest import (
    GatewayFactory,
    RawUpstream,
    Recorder,
    raw_exchange,
)

RawFactory = Callable[..., Awaitable[RawUpstream]]


def cut_upstream(response: bytes, *, reset: bool = False
                 ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A raw upstream callback: read the request head, write ``response``, then end
    the connection (FIN, or RST with ``reset``) before the body is complete."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await asyncio.sleep(0.1)  # the head and first bytes reach the client first
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    return answer


CUT = {
    "chunked body without its last chunk":
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", False),
    "fewer bytes than Content-Length (small)":
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello", False),
    "fewer bytes than Content-Length (large)":
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000, False),
    "reset mid-body":
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000, True),
    "reset mid-chunked-body":
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", True),
    "reset of a body delimited by the connection's end":
        (b"HTTP/1.1 200 OK\r\n\r\nhello", True),
}


def assert_incomplete(data: bytes) -> None:
    """The client got a response head but no complete message."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    assert head.startswith(b"HTTP/1.1 200"), head
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        assert not body.endswith(b"0\r\n\r\n"), "a cut chunked body got its last chunk"
    else:
        length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
        assert len(body) < length


@pytest.mark.parametrize("case", sorted(CUT))
async def test_truncated_upstream_body_aborts_the_client_connection(
        case: str, gateway_process: GatewayFactory, raw_upstream: RawFactory) -> None:
    response, reset = CUT[case]
    up = await raw_upstream(cut_upstream(response, reset=reset))
    gw = await gateway_process(f"""
[[routes]]
name = "cut"
path = "/cut"
upstream = "{up.url}"
""")
    exchange = await raw_exchange(gw.port, b"GET /cut/x HTTP/1.1\r\nHost: gw\r\n\r\n",
                                  read_for=5.0)
    assert exchange.closed, "the connection stayed open as if the response were complete"
    assert_incomplete(exchange.data)
    assert "Traceback" not in gw.stderr()


async def test_body_delimited_by_close_is_complete(
        gateway_process: GatewayFactory, raw_upstream: RawFactory) -> None:
    up = await raw_upstream(cut_upstream(b"HTTP/1.1 200 OK\r\n\r\nhello, whole"))
    gw = await gateway_process(f"""
[[routes]]
name = "eof"
path = "/eof"
upstream = "{up.url}"
""")
    exchange = await raw_exchange(
        gw.port, b"GET /eof/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    [response] = exchange.responses
    assert response.status == 200
    assert response.body == b"hello, whole"


async def test_truncation_is_in_the_access_log(raw_upstream: RawFactory) -> None:
    response, _ = CUT["chunked body without its last chunk"]
    up = await raw_upstream(cut_upstream(response))
    recorder = Recorder()
    gw = await start_gateway({"plugins": {"recorder": {}},
                              "routes": [{"name": "cut", "path": "/cut", "upstream": up.url}]},
                             plugins={"recorder": recorder})
    try:
        await raw_exchange(gw.running.port, b"GET /cut/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        await asyncio.wait_for(recorder.logged.wait(), 5)
        [record] = recorder.records
        assert record["route"] == "cut"
        assert "mid-body" in record["error"], record
        assert record["bytes_out"] == 5
    finally:
        await gw.close()


async def test_truncated_body_is_not_cached(
        gateway_process: GatewayFactory, raw_upstream: RawFactory) -> None:
    response, _ = CUT["chunked body without its last chunk"]
    up = await raw_upstream(cut_upstream(
        response.replace(b"200 OK\r\n", b"200 OK\r\nCache-Control: max-age=60\r\n")))
    gw = await gateway_process(f"""
[plugins.cache]
ttl = "60s"

[[routes]]
name = "cut"
path = "/cut"
upstream = "{up.url}"
""")
    for _ in range(2):
        # the cache reads a small body whole before the head goes out: a cut one is
        # then a 502 for the client, never a 200
        exchange = await raw_exchange(gw.port, b"GET /cut/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        [response] = exchange.responses
        assert response.status == 502
        assert response.headers.get("X-Cache") != "HIT"
    assert up.connections == 2  # the second request went upstream again
