"""Request smuggling shapes and malformed requests, over raw sockets (PRODUCT.md 4.1).

Each refused shape gets a 400 problem document (431 for an oversize header
block), the gateway closes the connection, and the upstream never sees the
refused request. Bytes are written by hand so that no client library tidies
them up first.
"""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory, RawExchange, UpstreamFactory, problem, raw_exchange


def config(upstream_url: str) -> str:
    return f"""
[gateway]
timeout = "5s"

[[routes]]
name = "api"
path = "/api"
upstream = "{upstream_url}"
"""


GOOD = b"GET /api/ok HTTP/1.1\r\nHost: gw\r\n\r\n"

SHAPES = {
    "content-length and transfer-encoding": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding then content-length": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "duplicate content-length, different values": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "duplicate content-length, equal values": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
    "content-length list": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nhello"
    ),
    "obs-fold": (
        b"GET /api/x HTTP/1.1\r\nHost: gw\r\nX-Folded: first\r\n second\r\n\r\n"
    ),
    "obs-fold with a tab": (
        b"GET /api/x HTTP/1.1\r\nHost: gw\r\nX-Folded: first\r\n\tsecond\r\n\r\n"
    ),
    "transfer-encoding other than chunked": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    ),
    "transfer-encoding gzip, chunked": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "transfer-encoding chunked, then identity": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n"
    ),
    "space before the colon": (
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length : 5\r\n\r\nhello"
    ),
    "malformed request line": b"GET /api/x HTTP/1.1 extra\r\nHost: gw\r\n\r\n",
}


def assert_refused(exchange: RawExchange, status: int = 400) -> None:
    responses = exchange.responses
    assert [r.status for r in responses] == [status], exchange.data
    response = responses[0]
    assert response.headers["Content-Type"].startswith("application/problem+json")
    doc = problem(response.body)
    assert doc["status"] == status
    assert response.headers["X-Request-ID"] == doc["request_id"]
    assert exchange.closed, "the gateway kept the connection open after refusing the request"


async def test_smuggling_shapes_are_refused_and_close_the_connection(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    for name, request in SHAPES.items():
        exchange = await raw_exchange(gw.port, request)
        try:
            assert_refused(exchange)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
        assert up.seen == [], f"{name}: the upstream received {up.seen}"
    exchange = await raw_exchange(gw.port, GOOD, read_for=0.5)
    assert [r.status for r in exchange.responses] == [200]
    assert len(up.seen) == 1


@pytest.mark.parametrize("name", ["content-length and transfer-encoding",
                                  "duplicate content-length, equal values", "obs-fold"])
async def test_refused_request_after_a_valid_one_on_a_keep_alive_connection(
        gateway_process: GatewayFactory, upstream: UpstreamFactory, name: str) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    # The good request is answered before the bad one is written.
    exchange = await raw_exchange(gw.port, GOOD, SHAPES[name] + GOOD, pause=0.3)
    statuses = [r.status for r in exchange.responses]
    assert statuses == [200, 400], exchange.data
    assert exchange.closed
    assert [s.path for s in up.seen] == ["/ok"]


async def test_get_with_a_body_claimed_twice_does_not_reach_the_upstream_as_a_second_request(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """The classic CL.TE shape: a front end that trusts Content-Length would
    forward the chunked "body" as the start of another request."""
    up = await upstream()
    gw = await gateway_process(config(up.url))
    smuggled = b"GET /api/admin HTTP/1.1\r\nHost: gw\r\n\r\n"
    chunk = b"0\r\n\r\n" + smuggled
    attack = (b"GET /api/ok HTTP/1.1\r\nHost: gw\r\n"
              b"Content-Length: " + str(len(chunk)).encode() + b"\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
    exchange = await raw_exchange(gw.port, GOOD, attack, pause=0.3)
    assert [r.status for r in exchange.responses] == [200, 400], exchange.data
    assert exchange.closed
    assert [s.path for s in up.seen] == ["/ok"]

    # Written in one go, the parser refuses the whole batch; whatever is
    # answered, the last answer is a 400 and the smuggled request never goes up.
    exchange = await raw_exchange(gw.port, GOOD + attack)
    assert exchange.responses[-1].status == 400, exchange.data
    assert exchange.closed
    assert "/admin" not in [s.path for s in up.seen]


async def test_oversize_header_block_gets_431(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    one_huge = b"GET /api/x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    many = b"GET /api/x HTTP/1.1\r\nHost: gw\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(1000)) + b"\r\n"
    for request in (one_huge, many):
        exchange = await raw_exchange(gw.port, request)
        assert_refused(exchange, 431)
    assert up.seen == []
    exchange = await raw_exchange(gw.port, GOOD, read_for=0.5)
    assert [r.status for r in exchange.responses] == [200]


async def test_overlong_request_line_is_refused(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    exchange = await raw_exchange(gw.port, b"GET /api/" + b"a" * 20_000 + b" HTTP/1.1\r\n"
                                  b"Host: gw\r\n\r\n")
    responses = exchange.responses
    assert [r.status for r in responses] == [400], exchange.data
    problem(responses[0].body)
    assert exchange.closed
    assert up.seen == []
