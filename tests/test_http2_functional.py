"""HTTP/2 at the edge (PRODUCT.md section 10) against real ``pygate serve`` processes.

h2c with prior knowledge (``gateway.h2c = true``) and ALPN ``h2`` over TLS give the
behaviour of HTTP/1.1: the same routing, plugin chains, problem documents, request
IDs, limits and streaming, with many streams on one connection and flow control.
Requests that could smuggle through a downgrade to HTTP/1.1 are refused and never
reach an upstream; a client resetting streams, flooding control frames, trickling a
head or not reading is bounded. Clients are :class:`tests.h2client.H2Client`, which
sends header blocks exactly as given.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, HeadersFrame, PingFrame

from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    RawUpstream,
    ServeFactory,
    UpstreamFactory,
    accepts_connections,
    count_body,
    echo,
    free_port,
    parse_responses,
    problem,
    raw_exchange,
)
from tests.h2client import H2Client, Response

MB = 1024 * 1024


def config(upstream_url: str, gateway: str = "", extra: str = "") -> str:
    """h2c on, a route ``/api`` (path stripped) to ``upstream_url``, and ``extra``."""
    return f"""
[gateway]
h2c = true
{gateway}

[[routes]]
name = "api"
path = "/api"
upstream = "{upstream_url}"
{extra}"""


async def eventually(check: Callable[[], Any], within: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.02)


async def still_serving(gw: GatewayProcess, path: str = "/api/still-serving") -> None:
    """A new HTTP/2 connection is answered, and the gateway wrote no traceback."""
    async with await H2Client.connect(gw.port) as client:
        response = await client.get(path)
    assert response.status == 200
    assert "Traceback" not in gw.stderr()


def upstream_header(response: Response, name: str) -> str | None:
    """A header as the echo upstream received it."""
    for key, value in response.json()["headers"]:
        if key.lower() == name.lower():
            return str(value)
    return None


# ---------------------------------------------------------------------------
# The proxy, as over HTTP/1.1
# ---------------------------------------------------------------------------


async def test_routing_forwarding_headers_and_problem_documents(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, extra='methods = ["GET", "POST"]\n'))

    async with await H2Client.connect(gw.port) as client:
        ok = await client.get("/api/users/7?x=1", [("user-agent", "h2-test"),
                                                  ("cookie", "a=1"), ("cookie", "b=2")],
                              authority="api.example.com")
        missing = await client.get("/nowhere")
        wrong = await client.request("DELETE", "/api/users/7")

    assert ok.status == 200
    seen = ok.json()
    assert (seen["method"], seen["path"]) == ("GET", "/users/7?x=1")
    assert upstream_header(ok, "User-Agent") == "h2-test"
    assert upstream_header(ok, "Cookie") == "a=1; b=2"  # split cookies joined again
    assert upstream_header(ok, "X-Forwarded-Proto") == "http"
    assert upstream_header(ok, "X-Forwarded-Host") == "api.example.com"
    assert upstream_header(ok, "X-Forwarded-For") == "127.0.0.1"
    assert "connection" not in ok.headers and "transfer-encoding" not in ok.headers

    assert missing.status == 404
    assert missing.headers["content-type"] == "application/problem+json"
    doc = problem(missing.body)
    assert doc["status"] == 404 and doc["request_id"] == missing.headers["x-request-id"]

    assert wrong.status == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert problem(wrong.body)["route"] == "api"
    assert len(up.seen) == 1


async def test_request_id_is_kept_when_valid_and_goes_upstream(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        kept = await client.get("/api/a", [("x-request-id", "trace-123")])
        replaced = await client.get("/api/b", [("x-request-id", "has space")])
        made = await client.get("/api/c")

    assert kept.headers["x-request-id"] == "trace-123"
    assert upstream_header(kept, "X-Request-ID") == "trace-123"
    for response in (replaced, made):
        rid = response.headers["x-request-id"]
        assert rid and rid != "has space"
        assert upstream_header(response, "X-Request-ID") == rid


async def test_plugin_chain_rate_limit_answers_429_with_its_headers(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, extra="""
[plugins.rate-limit]
limit = 2
window = "1m"
"""))

    async with await H2Client.connect(gw.port) as client:
        responses = [await client.get(f"/api/{i}") for i in range(3)]

    assert [r.status for r in responses] == [200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["1", "0", "0"]
    refused = responses[2]
    assert refused.headers["ratelimit-limit"] == "2"
    assert int(refused.headers["retry-after"]) > 0
    assert problem(refused.body)["status"] == 429
    assert len(up.seen) == 2


async def test_request_body_streams_to_the_upstream(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """An 8 MB body (a hundred and twenty stream windows) arrives whole: the gateway hands the
    window back as the upstream reads, with or without a content-length."""
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))
    body = bytes(range(256)) * (8 * MB // 256)

    async with await H2Client.connect(gw.port) as client:
        sized = await client.request("POST", "/api/upload", [("content-length", str(len(body)))],
                                     body, within=60)
        unsized = await client.request("PUT", "/api/upload", body=body[:3 * MB], within=60)

    assert sized.status == 200 and sized.json()["body_size"] == len(body)
    assert unsized.status == 200 and unsized.json()["body_size"] == 3 * MB
    assert [s.body_size for s in up.seen] == [len(body), 3 * MB]


async def test_max_body_gets_413_declared_or_streamed(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, gateway='max_body = "1MB"'))

    async with await H2Client.connect(gw.port) as client:
        declared = await client.request("POST", "/api/big", [("content-length", str(2 * MB))],
                                        b"x" * (2 * MB))
        streamed = await client.request("POST", "/api/big", body=b"x" * (2 * MB))
        after = await client.get("/api/after")  # the same connection serves on

    assert declared.status == 413 and problem(declared.body)["status"] == 413
    assert streamed.status == 413 and problem(streamed.body)["status"] == 413
    assert after.status == 200
    assert [s.path for s in up.seen if s.method == "POST" and s.body_size] == []


async def test_large_streamed_response_arrives_whole(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    chunk = hashlib.sha256(b"pygate").digest() * 2048  # 64 KiB

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(400):  # 25 MiB, chunked
            await response.write(chunk)
        await response.write_eof()
        return response

    up = await upstream(stream)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        response = await client.get("/api/stream", within=60)

    assert response.status == 200 and response.reset is None
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(chunk * 400).digest()


async def test_upstream_down_is_a_502_problem_naming_no_address(
        gateway_process: GatewayFactory) -> None:
    port = free_port()
    gw = await gateway_process(config(f"http://127.0.0.1:{port}"))

    async with await H2Client.connect(gw.port) as client:
        response = await client.get("/api/x")

    assert response.status == 502
    doc = problem(response.body)
    assert doc["route"] == "api"
    assert "127.0.0.1" not in response.body.decode() and str(port) not in response.body.decode()


async def test_upstream_body_cut_short_resets_the_stream(
        gateway_process: GatewayFactory, raw_upstream: Any) -> None:
    """PRODUCT.md section 4, item 10: never passed off as complete."""

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)
        await writer.drain()

    up: RawUpstream = await raw_upstream(short)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        cut = await client.get("/api/cut")
        after = await client.get("/api/after")  # one stream lost, not the connection

    assert cut.status == 200
    assert cut.reset == ErrorCodes.INTERNAL_ERROR
    assert len(cut.body) < 100000
    assert after.status == 200 and after.reset == ErrorCodes.INTERNAL_ERROR  # same upstream
    assert "Traceback" not in gw.stderr()


async def test_expect_100_continue_gets_an_interim_response(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        response = await client.request("POST", "/api/upload", [("expect", "100-continue")],
                                         b"y" * 300000)

    assert response.interim == [100]
    assert response.status == 200 and response.json()["body_size"] == 300000


async def test_access_line_for_each_stream(
        gateway_process: GatewayFactory, upstream: UpstreamFactory, tmp_path: Path) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, extra="""
[plugins.logging]
path = "access.log"
flush_interval = "10ms"
"""))
    log_file = tmp_path / "access.log"

    async with await H2Client.connect(gw.port) as client:
        ids = [client.start("GET", f"/api/line/{i}", [("x-request-id", f"line-{i}")])
               for i in range(5)]
        statuses = [(await client.response(i)).status for i in ids]

    def lines() -> list[dict[str, Any]]:
        text = log_file.read_text() if log_file.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    await eventually(lambda: len(lines()) >= 5, what="five access lines")
    assert statuses == [200] * 5
    by_id = {line["request_id"]: line for line in lines()}
    for i in range(5):
        line = by_id[f"line-{i}"]
        assert (line["method"], line["path"], line["status"]) == ("GET", f"/api/line/{i}", 200)
        assert line["route"] == "api"


# ---------------------------------------------------------------------------
# Many streams, flow control
# ---------------------------------------------------------------------------


async def test_a_hundred_concurrent_streams_on_one_connection(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    state = {"now": 0, "peak": 0}
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        if state["peak"] >= 100:
            release.set()
        await asyncio.wait_for(release.wait(), 10)
        state["now"] -= 1
        return web.json_response({"path": request.path})

    up = await upstream(slow)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        ids = [client.start("GET", f"/api/{i}") for i in range(100)]
        responses = [await client.response(i, within=20) for i in ids]

    assert [r.status for r in responses] == [200] * 100
    assert [r.json()["path"] for r in responses] == [f"/{i}" for i in range(100)]
    assert state["peak"] == 100  # all hundred were at the upstream at once


async def test_streams_beyond_max_concurrent_streams_are_refused(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.Response(text="done")

    up = await upstream(held)
    gw = await gateway_process(config(up.url, gateway="max_concurrent_streams = 4"))

    async with await H2Client.connect(gw.port) as client:
        ids = [client.start("GET", f"/api/{i}") for i in range(10)]  # before its SETTINGS
        refused = [await client.response(i) for i in ids[4:]]
        await eventually(lambda: len(up.seen) == 4, what="four requests upstream")
        release.set()
        answered = [await client.response(i) for i in ids[:4]]
        advertised = client.conn.remote_settings.max_concurrent_streams
        again = await client.get("/api/again")

    assert advertised == 4
    assert [r.reset for r in refused] == [ErrorCodes.REFUSED_STREAM] * 6
    assert [r.status for r in answered] == [200] * 4
    assert again.status == 200
    assert len(up.seen) == 5


async def test_slow_reader_stops_the_upstream_instead_of_filling_memory(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """A client with a 1 KiB window that reads nothing: the gateway stops reading the
    256 MiB response from the upstream (its writes stall) and does not grow by it."""
    written = {"bytes": 0, "closed": False}
    chunk = b"z" * 65536

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 4096 * len(chunk)
        await response.prepare(request)
        try:
            for _ in range(4096):
                await response.write(chunk)
                written["bytes"] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            written["closed"] = True
            raise
        return response

    up = await upstream(routes={"GET /huge": huge, "GET /small": echo})
    gw = await gateway_process(config(up.url))
    async with await H2Client.connect(gw.port) as warm:  # the gateway's baseline
        assert (await warm.get("/api/small")).status == 200
    before = gw.rss_kb()

    slow = await H2Client.connect(gw.port, window=1024, auto_ack=False)
    stream_id = slow.start("GET", "/api/huge")
    marks: list[int] = []

    def settled() -> bool:  # the upstream's writes have stopped moving
        marks.append(written["bytes"])
        return len(marks) > 25 and marks[-1] == marks[-25] and marks[-1] > 0

    await eventually(settled, within=20, what="the upstream stalls")
    assert written["bytes"] < 32 * MB, written  # of 256 MiB
    assert slow.received <= 65535  # what the windows allowed
    assert gw.rss_kb() - before < 48 * 1024

    slow.reset(stream_id)  # the client gives up: so does the gateway, upstream
    await eventually(lambda: written["closed"], what="the upstream request abandoned")
    await slow.close()
    await still_serving(gw, "/api/small")


# ---------------------------------------------------------------------------
# Downgrade smuggling: refused, never forwarded
# ---------------------------------------------------------------------------

PSEUDO = [(":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", "/api/x")]

REFUSED_BY_THE_PROTOCOL: dict[str, dict[str, Any]] = {
    # RFC 9113 section 8.2.2: connection-specific fields
    "connection": {"headers": [("connection", "keep-alive")]},
    "transfer-encoding": {"headers": [("transfer-encoding", "chunked")]},
    "keep-alive": {"headers": [("keep-alive", "timeout=5")]},
    "upgrade (WebSocket)": {"headers": [("upgrade", "websocket"), ("sec-websocket-key",
                                                                    "dGhlIHNhbXBsZSBub25jZQ==")]},
    "upgrade (h2c)": {"headers": [("upgrade", "h2c")]},
    "proxy-connection": {"headers": [("proxy-connection", "close")]},
    "te other than trailers": {"headers": [("te", "gzip")]},
    # field names
    "upper-case name": {"headers": [("X-User-Id", "1")]},
    "space in a name": {"headers": [("x user", "1")]},
    "newline in a value": {"headers": [("x-a", "1\r\nx-b: 2")]},
    "newline in :path": {"pseudo": [*PSEUDO[:3], (":path", "/api/x HTTP/1.1\r\nHost: a")]},
    # pseudo-header fields
    "missing :path": {"pseudo": PSEUDO[:3]},
    "missing :method": {"pseudo": PSEUDO[1:]},
    "duplicate :path": {"pseudo": [*PSEUDO, (":path", "/admin")]},
    "duplicate :method": {"pseudo": [*PSEUDO, (":method", "GET")]},
    "unknown pseudo-header": {"pseudo": [*PSEUDO, (":admin", "1")]},
    "pseudo-header after a field": {"pseudo": PSEUDO[:3], "headers": [("x-a", "1"),
                                                                        (":path", "/api/x")]},
    ":status in a request": {"pseudo": [*PSEUDO, (":status", "200")]},
    ":authority and host disagree": {"headers": [("host", "other.example")]},
    "content-length not a number": {"headers": [("content-length", "5, 5")]},
}

ANSWERED_400: dict[str, dict[str, Any]] = {
    "two content-lengths": {"headers": [("content-length", "3"), ("content-length", "3")]},
    "content-length and no data": {"headers": [("content-length", "10")]},
    "scheme neither http nor https": {"pseudo": [PSEUDO[0], (":scheme", "gopher"),
                                                 *PSEUDO[2:]]},
    "absolute :path": {"pseudo": [*PSEUDO[:3], (":path", "http://internal/admin")]},
    "space in :path": {"pseudo": [*PSEUDO[:3], (":path", "/api/x /admin")]},
    "userinfo in :authority": {"pseudo": [*PSEUDO[:2], (":authority", "user@gw"), PSEUDO[3]]},
    "control character in a value": {"headers": [("x-a", "1\x01")]},
    "name not a token": {"headers": [("x(a)", "1")]},
    "lower-case method": {"pseudo": [(":method", "post"), *PSEUDO[1:]]},
    "extended CONNECT": {"pseudo": [(":method", "CONNECT"), (":protocol", "websocket"),
                                    *PSEUDO[1:]]},
}


async def test_downgrade_smuggling_shapes_are_refused_and_never_forwarded(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """Each shape on its own connection: h2 refuses malformed requests as a connection
    error (GOAWAY PROTOCOL_ERROR, RFC 9113 section 5.4.1 allows it); what HTTP/2
    allows but HTTP/1.1 could not carry gets a 400 problem document."""
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    for shape, parts in REFUSED_BY_THE_PROTOCOL.items():
        async with await H2Client.connect(gw.port) as client:
            stream_id = client.start("POST", "/api/x", parts.get("headers", ()),
                                     pseudo=parts.get("pseudo"))
            response = await client.response(stream_id)
            await client.wait_closed()
        assert response.status is None, shape
        assert client.goaway is not None and client.goaway.error_code == \
            ErrorCodes.PROTOCOL_ERROR, shape

    for shape, parts in ANSWERED_400.items():
        async with await H2Client.connect(gw.port) as client:
            response = await client.request("POST", "/api/x", parts.get("headers", ()),
                                            pseudo=parts.get("pseudo"))
        assert response.status == 400, (shape, response)
        assert problem(response.body)["status"] == 400, shape

    assert up.seen == []
    await still_serving(gw)


async def test_content_length_that_disagrees_with_the_data_is_refused(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """More or fewer bytes than the content-length: the request is refused before the
    upstream has a whole body (it never gets a request it could read as complete, and
    whatever followed can never be read as a request of its own)."""
    async def whole(request: web.Request) -> web.Response:
        size = await count_body(request)
        return web.json_response({"body_size": size})

    up = await upstream(whole)
    gw = await gateway_process(config(up.url))

    for body in (b"12345", b"x" * 20):
        async with await H2Client.connect(gw.port) as client:
            stream_id = client.start("POST", "/api/x", [("content-length", "10")], end=False)
            await client.send_data(stream_id, body, end=True)
            response = await client.response(stream_id)
            await client.wait_closed()
        assert response.status is None, body
        assert client.goaway is not None and client.goaway.error_code == \
            ErrorCodes.PROTOCOL_ERROR
    assert [s.body_size for s in up.seen if s.body_size is not None] == []
    await still_serving(gw)


async def test_connect_gets_405_and_te_trailers_is_allowed(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        tunnel = await client.request("CONNECT", "", pseudo=[(":method", "CONNECT"),
                                                             (":authority", "internal:22")])
        trailers = await client.get("/api/x", [("te", "trailers")])

    assert tunnel.status == 405 and problem(tunnel.body)["status"] == 405
    assert trailers.status == 200
    assert upstream_header(trailers, "TE") is None  # hop-by-hop: not forwarded
    assert [s.path for s in up.seen] == ["/x"]


async def test_header_fields_too_large_or_too_many_get_431(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    async with await H2Client.connect(gw.port) as client:
        large = await client.get("/api/x", [("x-large", "a" * 9000)])
        many = await client.get("/api/x", [(f"x-h{i}", "1") for i in range(130)])
        fine = await client.get("/api/x", [(f"x-h{i}", "1") for i in range(100)])
    async with await H2Client.connect(gw.port) as client:  # beyond the advertised list size
        huge = await client.get("/api/x", [(f"x-h{i}", "b" * 8000) for i in range(10)])
        await client.wait_closed()

    assert large.status == 431 and problem(large.body)["status"] == 431
    assert many.status == 431
    assert fine.status == 200
    assert huge.status is None and client.goaway is not None
    assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert len(up.seen) == 1


# ---------------------------------------------------------------------------
# Resets, floods, slow and idle clients
# ---------------------------------------------------------------------------


async def test_rapid_reset_gets_goaway_and_other_clients_are_served(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    attacker = await H2Client.connect(gw.port)
    for i in range(1000):
        stream_id = attacker.start("GET", f"/api/{i}")
        attacker.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    attacker.flush()
    async with await H2Client.connect(gw.port) as other:
        served = await other.get("/api/other")
    await attacker.wait_closed()

    assert served.status == 200
    assert attacker.goaway is not None
    assert attacker.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert len(up.seen) < 300  # at most the streams it may run at once got anywhere
    await attacker.close()
    await still_serving(gw)


async def test_reset_stream_abandons_its_upstream_call(
        gateway_process: GatewayFactory, upstream: UpstreamFactory, tmp_path: Path) -> None:
    state = {"cancelled": 0}

    async def slow(request: web.Request) -> web.Response:
        for _ in range(600):  # until the gateway lets go of the connection
            transport = request.transport
            if transport is None or transport.is_closing():
                state["cancelled"] += 1
                break
            await asyncio.sleep(0.05)
        return web.Response(text="late")

    up = await upstream(slow)
    gw = await gateway_process(config(up.url, extra="""
[plugins.logging]
path = "access.log"
flush_interval = "10ms"
"""))

    async with await H2Client.connect(gw.port) as client:
        stream_id = client.start("GET", "/api/slow", [("x-request-id", "given-up")])
        await eventually(lambda: up.seen, what="the request upstream")
        client.reset(stream_id)
        await eventually(lambda: state["cancelled"], what="the upstream call abandoned")

    log_file = tmp_path / "access.log"
    await eventually(lambda: log_file.exists() and "given-up" in log_file.read_text())
    line = next(json.loads(x) for x in log_file.read_text().splitlines() if "given-up" in x)
    assert line["status"] == 499 and line["path"] == "/api/slow"


async def test_ping_and_settings_floods_get_goaway(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    for flood in (PingFrame(0, opaque_data=b"12345678").serialize() * 3000,
                  b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" * 3000):  # empty SETTINGS
        client = await H2Client.connect(gw.port)
        client.write_raw(flood)
        await client.wait_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        await client.close()
    await still_serving(gw)


async def test_request_head_deadline_and_idle_timeout(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, gateway='header_timeout = "1s"\n'
                                                      'keepalive_timeout = "2s"'))

    # No request at all after the preface: closed once header_timeout has passed.
    silent = await H2Client.connect(gw.port)
    started = time.monotonic()
    await silent.wait_closed(5)
    assert 0.8 <= time.monotonic() - started <= 3
    await silent.close()

    # A HEADERS frame promising CONTINUATION that never comes, after a first request.
    trickler = await H2Client.connect(gw.port)
    assert (await trickler.get("/api/first")).status == 200
    block = trickler.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http")])
    trickler.write_raw(HeadersFrame(3, data=block).serialize())  # no END_HEADERS
    started = time.monotonic()
    await trickler.wait_closed(5)
    assert 0.8 <= time.monotonic() - started <= 3
    await trickler.close()

    # Idle after its request: GOAWAY NO_ERROR once keepalive_timeout has passed.
    idle = await H2Client.connect(gw.port)
    assert (await idle.get("/api/once")).status == 200
    started = time.monotonic()
    await idle.wait_closed(6)
    assert 1.8 <= time.monotonic() - started <= 4.5
    assert idle.goaway is not None and idle.goaway.error_code == ErrorCodes.NO_ERROR
    await idle.close()
    assert len(up.seen) == 2


# ---------------------------------------------------------------------------
# The listener: h2c beside HTTP/1.1, drain, reload, workers, TLS
# ---------------------------------------------------------------------------


async def test_http11_is_served_unchanged_on_an_h2c_listener(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    async with http.get(gw.url + "/api/h1") as response:
        assert response.status == 200 and response.version == aiohttp.HttpVersion11
    async with http.put(gw.url + "/api/h1", data=b"p" * 1000) as response:  # "P", as "PRI"
        assert response.status == 200 and (await response.json())["body_size"] == 1000
    exchange = await raw_exchange(gw.port, b"GET /api/a HTTP/1.1\r\nHost: gw\r\n\r\n"
                                           b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n",
                                  read_for=1.0)
    assert [r.status for r in exchange.responses] == [200, 404]
    smuggled = await raw_exchange(
        gw.port, b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert [r.status for r in smuggled.responses] == [400] and smuggled.closed
    assert len(up.seen) == 3


async def test_drain_sends_goaway_and_lets_streams_in_flight_finish(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    up = await upstream(slow)
    gw = await gateway_process(config(up.url, gateway='drain_timeout = "10s"'))

    idle = await H2Client.connect(gw.port)
    busy = await H2Client.connect(gw.port)
    assert (await idle.get("/api/first", within=5)).status == 200
    stream_id = busy.start("GET", "/api/slow")
    await eventually(lambda: len(up.seen) == 2, what="the slow request upstream")
    gw.proc.send_signal(signal.SIGTERM)

    await idle.wait_closed(3)  # idle: GOAWAY and closed at once
    assert idle.goaway is not None and idle.goaway.error_code == ErrorCodes.NO_ERROR
    response = await busy.response(stream_id, within=5)
    assert busy.goaway is not None and busy.goaway.error_code == ErrorCodes.NO_ERROR
    assert busy.goaway.last_stream_id == stream_id
    assert response.status == 200 and response.body == b"finished"
    assert "connection" not in response.headers
    await busy.wait_closed(3)
    assert await gw.exit_code(10) == 0
    await idle.close()
    await busy.close()


async def test_a_client_goaway_lets_its_streams_in_flight_finish(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="finished")

    up = await upstream(slow)
    gw = await gateway_process(config(up.url))

    client = await H2Client.connect(gw.port)
    stream_id = client.start("GET", "/api/slow")
    await eventually(lambda: up.seen, what="the request upstream")
    client.write_raw(GoAwayFrame(0, last_stream_id=0).serialize())  # graceful: NO_ERROR
    response = await client.response(stream_id)
    await client.wait_closed()
    await client.close()

    assert response.status == 200 and response.body == b"finished"
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
    await still_serving(gw)


async def test_reload_gives_new_connections_the_new_stream_limit(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, gateway="max_concurrent_streams = 5"))

    async def advertised() -> int:
        async with await H2Client.connect(gw.port) as client:
            assert (await client.get("/api/x")).status == 200
            return int(client.conn.remote_settings.max_concurrent_streams)

    assert await advertised() == 5
    gw.config_path.write_text(config(up.url, gateway="max_concurrent_streams = 7"))
    gw.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: any(e.get("event") == "reloaded" for e in gw.log_events()),
                     what="reloaded")
    assert await advertised() == 7


async def test_h2c_under_several_workers(serve: ServeFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await serve(config(up.url, gateway="workers = 2"), "--workers", "2")
    await eventually(lambda: any(e.get("event") == "workers ready" for e in gw.log_events()),
                     within=30, what="workers ready")
    assert await accepts_connections(gw.port)

    clients = [await H2Client.connect(gw.port) for _ in range(8)]
    responses = [await client.get(f"/api/{i}") for i, client in enumerate(clients)]
    for client in clients:
        await client.close()
    assert [r.status for r in responses] == [200] * 8


@pytest.fixture
def certificates(tmp_path: Path) -> trustme.CA:
    ca = trustme.CA()
    leaf = ca.issue_cert("gateway.test")
    (tmp_path / "gw.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tmp_path / "gw.key"))
    return ca


def tls_client(ca: trustme.CA, *alpn: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(list(alpn))
    return context


async def test_alpn_h2_over_tls(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        certificates: trustme.CA) -> None:
    up = await upstream(echo)
    gw = await gateway_process(f"""
[gateway.tls]
cert = "gw.pem"
key = "gw.key"
hsts = "1d"

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""")

    async with await H2Client.connect(gw.port, ssl_context=tls_client(certificates, "h2",
                                                                      "http/1.1"),
                                      server_hostname="gateway.test") as client:
        ids = [client.start("GET", f"/api/{i}", scheme="https") for i in range(20)]
        responses = [await client.response(i) for i in ids]
        smuggle = client.start("GET", "/api/x", [("transfer-encoding", "chunked")],
                               scheme="https")
        refused = await client.response(smuggle)
    assert [r.status for r in responses] == [200] * 20
    assert {upstream_header(r, "X-Forwarded-Proto") for r in responses} == {"https"}
    assert {r.headers["strict-transport-security"] for r in responses} == {"max-age=86400"}
    assert refused.status is None and client.goaway is not None
    assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR

    # A client offering only http/1.1 on the same listener speaks HTTP/1.1.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", gw.port, ssl=tls_client(certificates, "http/1.1"),
        server_hostname="gateway.test")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    writer.write(b"GET /api/h1 HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert [r.status for r in parse_responses(data)] == [200]
    assert len(up.seen) == 21


async def test_tls_without_http2_offers_only_http11(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        certificates: trustme.CA) -> None:
    up = await upstream(echo)
    gw = await gateway_process(f"""
[gateway.tls]
cert = "gw.pem"
key = "gw.key"
http2 = false

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""")
    _, writer = await asyncio.open_connection(
        "127.0.0.1", gw.port, ssl=tls_client(certificates, "h2", "http/1.1"),
        server_hostname="gateway.test")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    writer.close()

