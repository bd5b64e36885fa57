"""The reverse proxy end to end: a real ``pygate serve`` between a client and upstreams.

Each test checks what a client or an upstream would notice (PRODUCT.md
section 4): paths, hop-by-hop and X-Forwarded-* headers, request IDs,
streaming at constant memory, body limits, path rewriting, and the problem
documents that upstream failures turn into.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    RawUpstream,
    UpstreamFactory,
    answer_not_http,
    answer_with_reset,
    count_body,
    echo,
    free_port,
    parse_responses,
    problem,
    raw_exchange,
)

MB = 1024 * 1024


def route(name: str, path: str, upstream: str, **options: Any) -> str:
    """One ``[[routes]]`` table."""
    lines = ["[[routes]]", f'name = "{name}"', f'path = "{path}"', f'upstream = "{upstream}"']
    for key, value in options.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, list):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def gateway_section(**options: Any) -> str:
    lines = ["[gateway]"]
    for key, value in options.items():
        if isinstance(value, list):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n\n"


def raw_get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: gw", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def assert_hides_internals(body: bytes, *ports: int) -> None:
    doc = problem(body)
    text = body.decode().replace(doc["request_id"], "")
    assert "127.0.0.1" not in text, text
    assert "Traceback" not in text, text
    for port in ports:
        assert str(port) not in text, text


# ---------------------------------------------------------------------------
# Path safety
# ---------------------------------------------------------------------------


async def test_dot_segments_are_resolved_before_routing_and_forwarding(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    users = await upstream()
    admin = await upstream()
    gw = await gateway_process(
        route("users", "/api/users", users.url, strip_path=False)
        + route("admin", "/api/admin", admin.url, strip_path=False))

    cases = [("/api/users/../admin", "/api/admin"),
             ("/api/users/%2e%2e/admin", "/api/admin"),
             ("/api//admin", "/api/admin"),
             ("/api/users/./../admin/./x/..", "/api/admin/"),
             ("/api/users/../admin/x?a=../b", "/api/admin/x?a=../b")]
    for target, expected in cases:
        exchange = await raw_exchange(gw.port, raw_get(target))
        assert [r.status for r in exchange.responses] == [200], (target, exchange.data)
        assert admin.last.path == expected, target
    assert users.seen == []

    # Safe percent-encoding is decoded for routing and forwarded encoded.
    exchange = await raw_exchange(gw.port, raw_get("/api/users/a%20b?q=%2F"))
    assert exchange.responses[0].status == 200
    assert users.last.path == "/api/users/a%20b?q=%2F"


async def test_unsafe_paths_get_400_and_never_reach_the_upstream(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(route("root", "/", up.url, strip_path=False))
    for target in ("/api/a%2Fb", "/api/a%2fb/c", "/api/a%00b", "/api/%zz", "/api/%2",
                   "/api/%C0%AF", "/..", "/api/../../etc/passwd", "/api/%2e%2e/%2e%2e/x"):
        exchange = await raw_exchange(gw.port, raw_get(target, "X-Request-ID: unsafe-path"))
        responses = exchange.responses
        assert [r.status for r in responses] == [400], (target, exchange.data)
        assert responses[0].headers["Content-Type"].startswith("application/problem+json")
        doc = problem(responses[0].body)
        assert doc["status"] == 400
        assert doc["request_id"] == "unsafe-path"
    assert up.seen == []
    exchange = await raw_exchange(gw.port, raw_get("/still/serving"))
    assert exchange.responses[0].status == 200
    assert up.last.path == "/still/serving"


# ---------------------------------------------------------------------------
# Hop-by-hop headers and X-Forwarded-*
# ---------------------------------------------------------------------------

REQUEST_HOP_BY_HOP = {
    "Connection": "X-Custom-Hop, Keep-Alive",
    "X-Custom-Hop": "secret",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
    "Proxy-Connection": "keep-alive",
    "Upgrade": "h2c",
}


async def test_hop_by_hop_request_headers_are_not_forwarded(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(route("api", "/api", up.url))
    headers = CIMultiDict({**REQUEST_HOP_BY_HOP, "X-End-To-End": "kept",
                           "Authorization": "Bearer t"})
    headers.add("X-Repeated", "one")
    headers.add("X-Repeated", "two")
    async with http.get(gw.url + "/api/x", headers=headers) as response:
        assert response.status == 200
    seen = up.last.headers
    for name in (*REQUEST_HOP_BY_HOP, "Transfer-Encoding"):
        assert name not in seen, f"{name} was forwarded: {dict(seen)}"
    assert seen["X-End-To-End"] == "kept"
    assert seen["Authorization"] == "Bearer t"
    assert seen.getall("X-Repeated") == ["one", "two"]

    # A chunked request body is re-framed by the gateway, not passed on as framing.
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async with http.post(gw.url + "/api/x", data=body(),
                         headers={"Connection": "X-Custom-Hop", "X-Custom-Hop": "1"}) as response:
        assert response.status == 200
        assert (await response.json())["body_size"] == 6
    assert "X-Custom-Hop" not in up.last.headers

    # An Upgrade that is not a WebSocket one is dropped, and the connection
    # stays plain HTTP: the next request on it is answered as usual.
    upgrade = (b"GET /api/up HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    exchange = await raw_exchange(gw.port, upgrade, raw_get("/api/next"), pause=0.3)
    assert [r.status for r in exchange.responses] == [200, 200], exchange.data
    seen = up.seen[-2].headers
    assert up.seen[-2].path == "/up"
    for name in ("Connection", "Upgrade", "HTTP2-Settings"):
        assert name not in seen, f"{name} was forwarded: {dict(seen)}"
    assert up.last.path == "/next"


async def test_hop_by_hop_response_headers_are_not_returned(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(text="ok", headers={
            "Connection": "X-Secret-Hop",
            "X-Secret-Hop": "internal",
            "Keep-Alive": "timeout=99",
            "Proxy-Authenticate": "Basic realm=inner",
            "Proxy-Connection": "keep-alive",
            "Trailer": "X-Checksum",
            "Upgrade": "h2c",
            "X-Kept": "yes",
        })
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    up = await upstream(handler)
    gw = await gateway_process(route("api", "/api", up.url))
    async with http.get(gw.url + "/api/x") as response:
        assert response.status == 200
        assert await response.text() == "ok"
        for name in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection",
                     "Trailer", "Upgrade"):
            assert name not in response.headers, f"{name} came back: {dict(response.headers)}"
        assert "x-secret-hop" not in response.headers.get("Connection", "").lower()
        assert response.headers["X-Kept"] == "yes"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_x_forwarded_for_is_replaced_when_the_peer_is_not_trusted(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(gateway_section(trusted_proxies=["10.0.0.0/8"])
                               + route("api", "/api", up.url))
    headers = {"X-Forwarded-For": "203.0.113.9, 10.1.1.1", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "evil.example", "Host": "api.example.com"}
    async with http.get(gw.url + "/api/x", headers=headers) as response:
        assert response.status == 200
    seen = up.last.headers
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == "api.example.com"

    async with http.get(gw.url + "/api/x") as response:
        assert response.status == 200
    assert up.last.headers["X-Forwarded-For"] == "127.0.0.1"
    assert up.last.headers["X-Forwarded-Host"] == f"127.0.0.1:{gw.port}"


async def test_x_forwarded_for_is_appended_to_when_the_peer_is_trusted(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(gateway_section(trusted_proxies=["127.0.0.1/32"])
                               + route("api", "/api", up.url))
    async with http.get(gw.url + "/api/x",
                        headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.2"}) as response:
        assert response.status == 200
    assert up.last.headers["X-Forwarded-For"] == "203.0.113.9, 198.51.100.2, 127.0.0.1"
    assert up.last.headers["X-Forwarded-Proto"] == "http"
    assert up.last.headers["X-Forwarded-Host"] == f"127.0.0.1:{gw.port}"

    async with http.get(gw.url + "/api/x") as response:
        assert response.status == 200
    assert up.last.headers["X-Forwarded-For"] == "127.0.0.1"

    # Several header lines are one list (RFC 9110 5.3); a trusted proxy may add its own line.
    lines = CIMultiDict([("X-Forwarded-For", "203.0.113.9"),
                         ("X-Forwarded-For", "198.51.100.2")])
    async with http.get(gw.url + "/api/x", headers=lines) as response:
        assert response.status == 200
    assert up.last.headers.getall("X-Forwarded-For") == ["203.0.113.9, 198.51.100.2, 127.0.0.1"]

    # A trusted proxy's view of the scheme and host is kept.
    async with http.get(gw.url + "/api/x", headers={"X-Forwarded-Proto": "https",
                                                    "X-Forwarded-Host": "public.example"}
                        ) as response:
        assert response.status == 200
    assert up.last.headers["X-Forwarded-Proto"] == "https"
    assert up.last.headers["X-Forwarded-Host"] == "public.example"


# ---------------------------------------------------------------------------
# Request ID
# ---------------------------------------------------------------------------


async def test_request_id_is_kept_when_valid_and_replaced_when_not(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(route("api", "/api", up.url))

    for valid in ("abc-123_XYZ.~", "x" * 128, "!#$%&'*+^`|"):
        async with http.get(gw.url + "/api/x", headers={"X-Request-ID": valid}) as response:
            assert response.status == 200
            assert response.headers["X-Request-ID"] == valid
        assert up.last.headers.getall("X-Request-ID") == [valid]

    made: set[str] = set()
    for invalid in ("has space", "x" * 129, "", "tab\there", "caf\u00e9"):
        async with http.get(gw.url + "/api/x", headers={"X-Request-ID": invalid}) as response:
            assert response.status == 200
            new = response.headers["X-Request-ID"]
        assert new != invalid
        assert 1 <= len(new) <= 128 and " " not in new
        assert up.last.headers.getall("X-Request-ID") == [new]
        made.add(new)
    assert len(made) == 5, "each request gets its own new ID"

    # Problem documents carry the same ID as the response header.
    async with http.get(gw.url + "/nowhere", headers={"X-Request-ID": "trace-me"}) as response:
        assert response.status == 404
        assert response.headers["X-Request-ID"] == "trace-me"
        assert problem(await response.read())["request_id"] == "trace-me"
    async with http.get(gw.url + "/nowhere", headers={"X-Request-ID": "bad id"}) as response:
        assert response.status == 404
        doc = problem(await response.read())
        assert doc["request_id"] == response.headers["X-Request-ID"] != "bad id"


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------


async def test_chunked_and_sse_responses_reach_the_client_as_the_upstream_sends_them(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    """The upstream sends its last chunk only once the client has the first one."""
    first_arrived = asyncio.Event()
    sent_last: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        sse = request.path.endswith("/events")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if sse else "text/plain"})
        if not sse:
            response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"data: first\n\n" if sse else b"first\n")
        try:
            await asyncio.wait_for(first_arrived.wait(), 5.0)
        except TimeoutError:
            pass
        sent_last.append(request.path)
        await response.write(b"data: last\n\n" if sse else b"last\n")
        await response.write_eof()
        return response

    up = await upstream(handler)
    gw = await gateway_process(route("stream", "/stream", up.url))
    for path, first, rest in (("/stream/chunks", b"first\n", b"last\n"),
                              ("/stream/events", b"data: first\n\n", b"data: last\n\n")):
        first_arrived.clear()
        sent_last.clear()
        started = time.monotonic()
        async with http.get(gw.url + path) as response:
            assert response.status == 200
            got = b""
            while len(got) < len(first):
                got += await asyncio.wait_for(response.content.readany(), 3.0)
            assert got == first
            assert sent_last == [], "the first chunk arrived only after the upstream finished"
            assert time.monotonic() - started < 3.0
            first_arrived.set()
            assert await response.read() == rest
        assert sent_last


def _watch_rss(gw: GatewayProcess, peak: list[int], stop: asyncio.Event) -> asyncio.Task[None]:
    async def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], gw.rss_kb())
            await asyncio.sleep(0.02)

    return asyncio.get_running_loop().create_task(watch())


async def test_large_request_body_streams_through_at_constant_memory(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"received": await count_body(request)})

    up = await upstream(handler)
    gw = await gateway_process(gateway_section(max_body="1GB", timeout="60s")
                               + route("upload", "/upload", up.url))
    size = 300 * MB
    block = b"u" * (256 * 1024)

    async def body(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // len(block)):
            yield block

    async with http.post(gw.url + "/upload", data=body(4 * MB)) as response:  # warm up
        assert (await response.json())["received"] == 4 * MB
    baseline = gw.rss_kb()
    peak = [baseline]
    stop = asyncio.Event()
    watcher = _watch_rss(gw, peak, stop)
    try:
        async with http.post(gw.url + "/upload", data=body(size)) as response:
            assert response.status == 200
            assert (await response.json())["received"] == size
    finally:
        stop.set()
        await watcher
    assert up.last.body_size == size
    growth_mb = (peak[0] - baseline) / 1024
    assert growth_mb < 60, f"gateway RSS grew by {growth_mb:.0f} MB for a {size // MB} MB upload"


async def test_large_response_body_streams_through_at_constant_memory(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    block = b"d" * MB

    async def handler(request: web.Request) -> web.StreamResponse:
        blocks = int(request.query["mb"])
        response = web.StreamResponse()
        response.content_length = blocks * len(block)
        await response.prepare(request)
        for _ in range(blocks):
            await response.write(block)
        await response.write_eof()
        return response

    up = await upstream(handler)
    gw = await gateway_process(gateway_section(timeout="60s") + route("dl", "/dl", up.url))

    async def download(mb: int) -> int:
        total = 0
        async with http.get(gw.url + f"/dl/file?mb={mb}") as response:
            assert response.status == 200
            assert response.content_length == mb * MB
            async for chunk in response.content.iter_any():
                total += len(chunk)
        return total

    assert await download(4) == 4 * MB  # warm up
    baseline = gw.rss_kb()
    peak = [baseline]
    stop = asyncio.Event()
    watcher = _watch_rss(gw, peak, stop)
    try:
        assert await download(300) == 300 * MB
    finally:
        stop.set()
        await watcher
    growth_mb = (peak[0] - baseline) / 1024
    assert growth_mb < 60, f"gateway RSS grew by {growth_mb:.0f} MB for a 300 MB download"


# ---------------------------------------------------------------------------
# max_body
# ---------------------------------------------------------------------------


async def test_declared_content_length_over_max_body_gets_413_without_calling_upstream(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(gateway_section(max_body="1KB") + route("api", "/api", up.url))
    async with http.post(gw.url + "/api/x", data=b"x" * 2048) as response:
        assert response.status == 413
        doc = problem(await response.read())
        assert doc["status"] == 413 and doc["route"] == "api"
    assert up.seen == []
    async with http.post(gw.url + "/api/x", data=b"x" * 1024) as response:
        assert response.status == 200
        assert (await response.json())["body_size"] == 1024

    # With Expect: 100-continue the client is told before it sends anything.
    head = (b"POST /api/x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n")
    exchange = await raw_exchange(gw.port, head % 5000, read_for=1.0)
    assert [r.status for r in exchange.responses] == [413], exchange.data
    exchange = await raw_exchange(gw.port, head % 5, b"hello", pause=0.3)
    assert exchange.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), exchange.data
    assert [r.status for r in parse_responses(exchange.data.split(b"\r\n\r\n", 1)[1])] == [200]
    assert up.last.body_size == 5
    assert "Expect" not in up.last.headers


async def test_chunked_body_crossing_max_body_gets_413(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(gateway_section(max_body="64KB") + route("api", "/api", up.url))
    block = b"c" * 16384

    async def body(blocks: int) -> AsyncIterator[bytes]:
        for _ in range(blocks):
            yield block
            await asyncio.sleep(0.01)

    async with http.post(gw.url + "/api/x", data=body(16)) as response:
        assert response.status == 413
        doc = problem(await response.read())
        assert doc["status"] == 413 and doc["route"] == "api"
    assert all(s.body_size != 16 * len(block) for s in up.seen)
    async with http.post(gw.url + "/api/x", data=body(4)) as response:
        assert response.status == 200
        assert (await response.json())["body_size"] == 4 * len(block)


# ---------------------------------------------------------------------------
# strip_path, rewrite, preserve_host
# ---------------------------------------------------------------------------


async def test_strip_path_rewrite_and_preserve_host(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(
        route("stripped", "/svc/a", up.url)
        + route("kept", "/svc/b", up.url, strip_path=False)
        + route("by-id", "/v2/users/{id}", up.url, rewrite="/users/{id}")
        + route("moved", "/old", up.url, rewrite="/new")
        + route("files", "/files/{rest:path}", up.url, rewrite="/store/{rest}")
        + route("host", "/host", up.url, preserve_host=True))

    cases = [
        ("/svc/a/x/y?q=1&r=%2F", "/x/y?q=1&r=%2F"),
        ("/svc/a", "/"),
        ("/svc/b/x", "/svc/b/x"),
        ("/v2/users/42", "/users/42"),
        ("/v2/users/a%20b", "/users/a%20b"),
        ("/old/x?y=1", "/new/x?y=1"),
        ("/files/a/b.txt", "/store/a/b.txt"),
    ]
    for sent, expected in cases:
        async with http.get(URL(gw.url + sent, encoded=True),
                            headers={"Host": "api.example.com"}) as response:
            assert response.status == 200, sent
        assert up.last.path == expected, sent
        assert up.last.headers["Host"] == f"127.0.0.1:{up.port}", sent
        assert up.last.headers["X-Forwarded-Host"] == "api.example.com"

    async with http.get(gw.url + "/host/x", headers={"Host": "api.example.com"}) as response:
        assert response.status == 200
    assert up.last.path == "/x"
    assert up.last.headers["Host"] == "api.example.com"


# ---------------------------------------------------------------------------
# Upstream failures, 404, 405
# ---------------------------------------------------------------------------


async def test_upstream_failures_become_problem_documents(
        gateway_process: GatewayFactory, upstream: UpstreamFactory, raw_upstream: Any,
        http: aiohttp.ClientSession) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.wait_for(release.wait(), 10.0)
        except TimeoutError:
            pass
        return web.Response(text="too late")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    ok = await upstream()
    slow_up = await upstream(slow)
    closer: RawUpstream = await raw_upstream(hang_up)
    liar: RawUpstream = await raw_upstream(answer_not_http)
    resetter: RawUpstream = await raw_upstream(answer_with_reset)
    closed_port = free_port()
    gw = await gateway_process(
        gateway_section(timeout="1s")
        + f'[upstreams.named-closed]\ntargets = ["http://127.0.0.1:{closed_port}"]\n\n'
        + route("ok", "/ok", ok.url)
        + route("refused", "/refused", f"http://127.0.0.1:{closed_port}")
        + route("refused-named", "/refused-named", "named-closed")
        + route("closer", "/closer", closer.url)
        + route("garbage", "/garbage", liar.url)
        + route("reset", "/reset", resetter.url)
        + route("slow", "/slow", slow_up.url))

    ports = (closed_port, closer.port, liar.port, resetter.port, slow_up.port, ok.port, gw.port)
    cases = [("/refused/x", 502, "refused"), ("/refused-named/x", 502, "refused-named"),
             ("/closer/x", 502, "closer"), ("/garbage/x", 502, "garbage"),
             ("/reset/x", 502, "reset"),
             ("/slow/x", 504, "slow")]
    try:
        for path, status, name in cases:
            started = time.monotonic()
            async with http.get(gw.url + path, headers={"X-Request-ID": f"case-{name}"}
                                ) as response:
                body = await response.read()
                elapsed = time.monotonic() - started
                assert response.status == status, (path, body)
                assert response.headers["Content-Type"].startswith("application/problem+json")
                assert response.headers["X-Request-ID"] == f"case-{name}"
            doc = problem(body)
            assert doc["status"] == status
            assert doc["title"] == ("Bad Gateway" if status == 502 else "Gateway Timeout")
            assert doc["request_id"] == f"case-{name}"
            assert doc["route"] == name
            assert_hides_internals(body, *ports)
            if status == 504:
                assert 0.9 <= elapsed < 2.0, f"504 after {elapsed:.2f}s with a 1s timeout"
            else:
                assert elapsed < 2.0
            # The gateway keeps serving after each failure.
            async with http.get(gw.url + "/ok/still") as response:
                assert response.status == 200
    finally:
        release.set()
    assert closer.connections >= 1 and liar.connections >= 1
    assert "Traceback" not in gw.stderr()


async def test_upstream_failing_mid_body_cuts_the_client_connection(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    """Once the status line is out, a cut connection is the only honest signal."""
    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = int(request.query["size"])
        await response.prepare(request)
        await response.write(b"p" * 1000)
        assert request.transport is not None
        request.transport.close()
        return response

    up = await upstream(routes={"GET /cut": truncated, "GET /fine": echo})
    gw = await gateway_process(route("api", "/api", up.url))
    for size in (10_000, 1_000_000):  # read whole, and streamed
        async with http.get(gw.url + f"/api/cut?size={size}") as response:
            assert response.status == 200
            try:
                body = await response.read()
            except aiohttp.ClientPayloadError:
                pass
            else:
                raise AssertionError(f"a truncated body looked complete: {len(body)} bytes")
        async with http.get(gw.url + "/api/fine") as response:
            assert response.status == 200
    assert "Traceback" not in gw.stderr()


async def test_no_route_gets_404_and_wrong_method_gets_405_with_allow(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    gw = await gateway_process(route("users", "/api/users", up.url, methods=["GET", "POST"])
                               + route("ro", "/api/ro", up.url, methods=["GET"]))
    async with http.get(gw.url + "/api/usersX") as response:
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("application/problem+json")
        doc = problem(await response.read())
        assert doc["status"] == 404 and doc["title"] == "Not Found"
        assert "route" not in doc
    async with http.delete(gw.url + "/api/users/7") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, POST"
        doc = problem(await response.read())
        assert doc["status"] == 405 and doc["title"] == "Method Not Allowed"
    async with http.put(gw.url + "/api/ro") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
    assert up.seen == []
    async with http.post(gw.url + "/api/users", data=b"{}") as response:
        assert response.status == 200
    assert up.last.method == "POST"

