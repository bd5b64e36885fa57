"""The lean upstream HTTP/1.1 client against real aiohttp servers and raw sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from pygate.testing import free_port
from pygate.upstream.client import (
    BodyLengthMismatch,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    InvalidHead,
    Pool,
    ProtocolError,
    ReadTimeout,
    build_head,
)


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[web.Request]]]:
    seen: list[web.Request] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        body = await request.read()
        return web.json_response({"method": request.method, "path": request.raw_path,
                                  "len": len(body), "te": request.headers.get("Transfer-Encoding"),
                                  "host": request.headers.get("Host")})

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def empty(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("GET", "/big", big)
    app.router.add_route("GET", "/slow", slow)
    app.router.add_route("*", "/empty", empty)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner, port = await serve(app)
    yield port, seen
    await runner.cleanup()


def pool(port: int, **kwargs: float) -> Pool:
    return Pool("http", "127.0.0.1", port, limit=int(kwargs.pop("limit", 8)),
                connect_timeout=kwargs.pop("connect_timeout", 1.0),
                read_timeout=kwargs.pop("read_timeout", 5.0))


async def test_get_reuses_one_keep_alive_connection(upstream) -> None:
    port, seen = upstream
    p = pool(port)
    for index in range(5):
        response = await p.request("GET", f"/a/{index}?q=1", [("X-Test", "v")])
        assert response.status == 200
        assert b'"/a/%d?q=1"' % index in await response.read()
    assert p.size == 1
    assert len({r.transport for r in seen}) == 1  # the upstream saw one connection
    await p.close()


async def test_bodies_bytes_and_streamed(upstream) -> None:
    port, _ = upstream
    p = pool(port)
    response = await p.request("POST", "/post", [], b"hello")
    assert b'"len": 5' in await response.read()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    response = await p.request("PUT", "/put", [], chunks())
    body = await response.read()
    assert b'"len": 10000' in body and b'"te": "chunked"' in body
    response = await p.request("POST", "/post", [("Content-Length", "10000")], chunks())
    body = await response.read()
    assert b'"len": 10000' in body and b'"te": null' in body
    await p.close()


async def test_large_response_streams_in_pieces(upstream) -> None:
    port, _ = upstream
    p = pool(port)
    response = await p.request("GET", "/big", [])
    pieces = total = 0
    async for chunk in response:
        pieces += 1
        total += len(chunk)
    assert total == 64 * 65536 and pieces > 1
    # the connection went back to the pool and is usable
    response = await p.request("GET", "/after", [])
    assert response.status == 200 and p.size == 1
    await response.read()
    await p.close()


async def test_head_and_204_have_no_body_and_keep_the_connection(upstream) -> None:
    port, _ = upstream
    p = pool(port)
    response = await p.request("HEAD", "/x", [])
    assert response.status == 200 and response.content_length and await response.read() == b""
    response = await p.request("GET", "/empty", [])
    assert response.status == 204 and await response.read() == b""
    response = await p.request("GET", "/y", [])
    assert b'"/y"' in await response.read()
    assert p.size == 1
    await p.close()


async def test_refused_and_read_timeout(upstream) -> None:
    port, _ = upstream
    with pytest.raises(ConnectError):
        await pool(free_port()).request("GET", "/", [])
    p = pool(port, read_timeout=0.2)
    with pytest.raises(ReadTimeout):
        await p.request("GET", "/slow", [])
    assert p.size == 0  # a timed-out connection is not reused
    await p.close()


async def raw_server(answer: bytes, close: bool = True) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if close:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_garbage_and_early_close_are_errors() -> None:
    server, port = await raw_server(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(ProtocolError):
        await pool(port).request("GET", "/", [])
    server.close()
    server, port = await raw_server(b"")
    with pytest.raises(Disconnected):
        await pool(port).request("GET", "/", [])
    server.close()
    server, port = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    response = await pool(port).request("GET", "/", [])
    with pytest.raises(Disconnected):
        await response.read()
    server.close()


async def test_body_delimited_by_close_and_informational_responses() -> None:
    server, port = await raw_server(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    response = await pool(port).request("GET", "/", [])
    assert await response.read() == b"until the end"
    server.close()
    server, port = await raw_server(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n"
        b"X-A: 1\r\n\r\nok")
    response = await pool(port).request("POST", "/", [], b"x")
    assert (response.status, response.reason, response.headers["X-A"]) == (201, "Created", "1")
    assert await response.read() == b"ok"
    server.close()


async def test_stale_keep_alive_connection_is_replaced(upstream) -> None:
    port, seen = upstream
    p = pool(port)
    response = await p.request("GET", "/one", [])
    await response.read()
    # the upstream closes the idle connection behind our back
    seen[-1].transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    response = await p.request("GET", "/two", [])
    assert b'"/two"' in await response.read()
    await p.close()


async def test_pool_limit_makes_requests_wait(upstream) -> None:
    port, _ = upstream
    p = pool(port, limit=2)

    async def one(index: int) -> int:
        response = await p.request("GET", f"/{index}", [])
        await response.read()
        return response.status

    assert await asyncio.gather(*(one(i) for i in range(20))) == [200] * 20
    assert p.size <= 2
    await p.close()


async def test_at_the_limit_requests_are_served_in_arrival_order(upstream) -> None:
    """A connection given back goes to the longest waiter, not to a request that came later.

    Otherwise, under load, a request can lose the race for a freed connection
    again and again while newer ones are served (a latency tail of seconds).
    """
    port, _ = upstream
    p = pool(port, limit=1)
    held = await p.request("GET", "/held", [])
    order: list[int] = []

    async def one(index: int) -> None:
        response = await p.request("GET", f"/{index}", [])
        await response.read()
        order.append(index)

    waiting = [asyncio.create_task(one(i)) for i in range(3)]
    await asyncio.sleep(0.05)  # all three are in line now
    await held.read()  # the connection comes back ...
    assert p.idle_connection() is None  # ... to the first in line, not to a newcomer
    late = asyncio.create_task(one(99))
    await asyncio.wait_for(asyncio.gather(*waiting, late), 5)
    assert order == [0, 1, 2, 99]
    assert p.size == 1
    await p.close()


async def test_a_waiter_that_gives_up_passes_the_connection_on(upstream) -> None:
    port, _ = upstream
    p = pool(port, limit=1)
    held = await p.request("GET", "/held", [])
    quitter = asyncio.create_task(p.request("GET", "/quitter", []))
    patient = asyncio.create_task(p.request("GET", "/patient", []))
    await asyncio.sleep(0.05)
    await held.read()  # handed to the quitter, which is cancelled before it runs
    quitter.cancel()
    response = await asyncio.wait_for(patient, 5)
    assert b'"/patient"' in await response.read()
    assert quitter.cancelled()
    assert p.size == 1
    await p.close()


async def test_a_closed_connection_frees_its_place_for_a_waiter(upstream) -> None:
    port, _ = upstream
    p = pool(port, limit=1)
    held = await p.request("GET", "/held", [])
    waiter = asyncio.create_task(p.request("GET", "/next", []))
    await asyncio.sleep(0.05)
    held.close()  # body left unread: the connection is dropped, a new one may open
    response = await asyncio.wait_for(waiter, 5)
    assert b'"/next"' in await response.read()
    assert p.size == 1
    await p.close()


async def test_waiting_for_a_free_connection_is_bounded_by_the_connect_timeout(
        upstream) -> None:
    port, _ = upstream
    p = pool(port, limit=1, connect_timeout=0.2)
    held = await p.request("GET", "/held", [])
    with pytest.raises(ConnectTimeout):
        await asyncio.wait_for(p.request("GET", "/waits", []), 5)
    await held.read()  # the connection is still good, and nobody is left in line
    response = await p.request("GET", "/after", [])
    assert b'"/after"' in await response.read()
    assert p.size == 1
    await p.close()


@pytest.mark.parametrize(("method", "target", "headers", "what"), [
    ("GET", "/", [("X-A", "ok\r\nX-Injected: 1")], "value of header 'X-A'"),
    ("GET", "/", [("X-A", "ok\nX-Injected: 1")], "value of header 'X-A'"),
    ("GET", "/", [("X-A", "nul\x00")], "value of header 'X-A'"),
    ("GET", "/", [("X-A", "bell\x07")], "value of header 'X-A'"),
    ("GET", "/", [("X-A: 1\r\nX-B", "v")], "header name"),
    ("GET", "/", [("Transfer-Encoding ", "chunked")], "header name"),
    ("GET", "/", [("X A", "v")], "header name"),
    ("GET", "/", [("", "v")], "header name"),
    ("GET", "/a HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /b", [], "target"),
    ("GET", "/a b", [], "target"),
    ("GET", "", [], "target"),
    ("GET /admin HTTP/1.1\r\n", "/", [], "method"),
    ("G T", "/", [], "method"),
])
def test_head_refuses_injection(method: str, target: str, headers: list[tuple[str, str]],
                                what: str) -> None:
    with pytest.raises(InvalidHead, match=what):
        build_head(method, target, headers, "h", 80, None)


def test_head_keeps_what_clients_may_send() -> None:
    head, _, _ = build_head("GET", "/p?q={a}|\"x\"", [("X-Tab", "a\tb"), ("X-Utf8", "café"),
                                                      ("X-Raw", "\udcff")], "h", 80, None)
    assert head.startswith(b"GET /p?q={a}|\"x\" HTTP/1.1\r\n")
    assert b"X-Tab: a\tb\r\n" in head and "café".encode() in head and b"X-Raw: \xff" in head


async def _stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_streamed_body_keeps_exactly_one_numeric_length() -> None:
    head, chunked, length = build_head("POST", "/p", [("Content-Length", "5")], "h", 80,
                                       _stream(b"hello"))
    assert (chunked, length) == (False, 5) and head.count(b"Content-Length") == 1
    head, chunked, length = build_head("POST", "/p", [], "h", 80, _stream(b"x"))
    assert chunked and length is None and b"Transfer-Encoding: chunked\r\n" in head
    for lengths in (["5", "5"], ["5", "6"], ["+5"], ["0x5"], ["5 "]):
        with pytest.raises(InvalidHead, match="Content-Length"):
            build_head("POST", "/p", [("Content-Length", v) for v in lengths], "h", 80,
                       _stream(b"hello"))


@pytest.mark.parametrize("chunks", [(b"hello", b" and more"), (b"hel",)])
async def test_streamed_body_that_misses_its_length_is_never_misread(
        chunks: tuple[bytes, ...]) -> None:
    """Bytes past (or short of) the Content-Length already sent would be read by the
    upstream as (part of) the next request: the connection is dropped instead."""
    received = bytearray()
    done = asyncio.Event()

    async def upstream_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                received.extend(data)
        finally:
            done.set()
            writer.close()

    server = await asyncio.start_server(upstream_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = Pool("http", "127.0.0.1", port, limit=4, connect_timeout=2, read_timeout=2)
    try:
        with pytest.raises(BodyLengthMismatch):
            await p.request("POST", "/p", [("Content-Length", "5")], _stream(*chunks))
        await asyncio.wait_for(done.wait(), 2)
        _, _, body = bytes(received).partition(b"\r\n\r\n")
        assert len(body) <= 5 and b"more" not in body
        assert p.size == 0  # nothing left to reuse
    finally:
        await p.close()
        server.close()
        await server.wait_closed()


def test_head_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        build_head("GET", "/", [("X-A", "ok\r\nX-Injected: 1")], "h", 80, None)
    head, chunked, length = build_head("POST", "/p", [("Content-Length", "99")], "h", 8080,
                                       b"abc")
    assert b"Content-Length: 3\r\n" in head and b"99" not in head and not chunked
    assert length is None
    assert head.startswith(b"POST /p HTTP/1.1\r\n") and b"Host: h:8080\r\n" in head


def _self_signed(tmp_path) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_https_target_with_an_untrusted_certificate_is_refused(tmp_path) -> None:
    async def secret(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/", secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
    await site.start()
    port = runner.addresses[0][1]
    p = Pool("https", "127.0.0.1", port, limit=2, connect_timeout=2, read_timeout=2)
    with pytest.raises(ConnectError) as caught:
        await p.request("GET", "/", [])
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    await p.close()
    await runner.cleanup()
