"""Attacks on the core, sent as an attacker sends them (PRODUCT.md section 4, items 6-8).

Each test reproduces one attack on the wire against a real ``pygate serve``
(raw sockets where a client library would tidy the bytes up) and checks what
the client and the upstream see: identity spoofing through header names with
``_``, an auth bypass through the case of a path, duplicate credentials, and
client input that must never make a 500.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import jwt
import pytest
from aiohttp import web

from pygate import hookimpl
from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    UpstreamFactory,
    echo,
    problem,
    raw_exchange,
)

SECRET = "hardening-test-secret-0123456789abcdef"


def token(sub: str = "7", role: str = "user") -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": 4102444800}, SECRET, algorithm="HS256")


def config(upstream_url: str, *gateway: str) -> str:
    """A public /api route and a jwt-protected /api/orders route, identity headers on."""
    return "\n".join(["[gateway]", 'timeout = "5s"', *gateway, "", f"""
[plugins.headers]

[[routes]]
name = "public"
path = "/api"
upstream = "{upstream_url}"
strip_path = false

[[routes]]
name = "orders"
path = "/api/orders"
upstream = "{upstream_url}"
plugins = {{ jwt = {{ secret = "{SECRET}", algorithms = ["HS256"] }} }}

[[routes]]
name = "user"
path = "/api/users/{{id}}"
upstream = "{upstream_url}"
rewrite = "/users/{{id}}"
"""])


def raw(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gw", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode("utf-8") + body


def upstream_headers(body: bytes) -> dict[str, str]:
    """The headers the echo upstream saw (from its JSON answer)."""
    return {name: value for name, value in json.loads(body)["headers"]}


def assert_no_traceback(gw: GatewayProcess) -> None:
    output = gw.stderr()
    assert "Traceback" not in output, output
    assert '"level": "error"' not in output, output


# ---------------------------------------------------------------------------
# 1. Header names with underscores
# ---------------------------------------------------------------------------


async def test_underscore_headers_are_dropped_so_they_cannot_pose_as_identity(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    spoof = ("X_User_Id: 1", "X_User_Role: admin", "X-User-Id: 2", "Transfer_Encoding: chunked",
             "X_Forwarded_For: 10.0.0.1")
    exchange = await raw_exchange(gw.port, raw("GET", "/api/profile", *spoof))
    [response] = exchange.responses
    assert response.status == 200
    seen = upstream_headers(response.body)
    assert not [name for name in seen if "_" in name], seen
    assert "X-User-Id" not in seen  # the headers plugin strips the client's copy
    assert "Transfer-Encoding" not in seen

    # with a verified token the upstream sees exactly the gateway's identity headers
    exchange = await raw_exchange(gw.port, raw(
        "GET", "/api/orders/1", f"Authorization: Bearer {token()}", *spoof))
    [response] = exchange.responses
    assert response.status == 200
    seen = upstream_headers(response.body)
    assert seen["X-User-Id"] == "7" and seen["X-User-Role"] == "user"
    assert not [name for name in seen if "_" in name], seen
    assert_no_traceback(gw)


async def test_underscore_headers_rejected_with_400_when_configured(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, 'underscore_headers = "reject"'))

    exchange = await raw_exchange(gw.port, raw("GET", "/api/profile", "X_User_Role: admin"))
    [response] = exchange.responses
    assert response.status == 400
    assert "underscore" in problem(response.body)["detail"]
    assert up.seen == []

    exchange = await raw_exchange(gw.port, raw("GET", "/api/profile", "X-Plain: yes"))
    assert [r.status for r in exchange.responses] == [200]


async def test_underscore_headers_forwarded_when_allowed(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, 'underscore_headers = "allow"'))

    exchange = await raw_exchange(gw.port, raw("GET", "/api/profile", "X_Legacy_Token: abc"))
    [response] = exchange.responses
    assert response.status == 200
    assert upstream_headers(response.body)["X_Legacy_Token"] == "abc"


async def test_underscore_headers_setting_is_validated(
        gateway_process: GatewayFactory, tmp_path: Any) -> None:
    from tests.conftest import serve_command, subprocess_env

    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nunderscore_headers = "strip"\npath_case = "lower"\n')
    proc = await asyncio.create_subprocess_exec(
        *serve_command(path, 1), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=subprocess_env())
    out, err = await proc.communicate()
    text = (out + err).decode()
    assert proc.returncode != 0
    assert "gateway.underscore_headers" in text and "gateway.path_case" in text
    assert "Traceback" not in text


# ---------------------------------------------------------------------------
# 2. Path case
# ---------------------------------------------------------------------------


async def test_path_case_sensitive_by_default(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    # RFC 3986: /api/ORDERS is another path; it is the public route's, as documented
    exchange = await raw_exchange(gw.port, raw("GET", "/api/ORDERS"))
    [response] = exchange.responses
    assert response.status == 200
    assert json.loads(response.body)["path"] == "/api/ORDERS"
    exchange = await raw_exchange(gw.port, raw("GET", "/api/orders"))
    assert [r.status for r in exchange.responses] == [401]


async def test_path_case_insensitive_sends_any_case_through_the_protected_route(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url, 'path_case = "insensitive"'))

    for path in ("/api/ORDERS", "/API/Orders/7", "/aPi/oRdErS"):
        exchange = await raw_exchange(gw.port, raw("GET", path))
        [response] = exchange.responses
        assert response.status == 401, (path, response.body)
        assert problem(response.body)["route"] == "orders"
    assert up.seen == []

    exchange = await raw_exchange(gw.port, raw("GET", "/API/ORDERS/7",
                                               f"Authorization: Bearer {token()}"))
    [response] = exchange.responses
    assert response.status == 200
    assert json.loads(response.body)["path"] == "/7"  # the matched prefix is stripped

    # template routes too; a parameter keeps the case the client sent
    exchange = await raw_exchange(gw.port, raw("GET", "/API/USERS/AbC"))
    [response] = exchange.responses
    assert response.status == 200
    assert json.loads(response.body)["path"] == "/users/AbC"


async def test_explain_follows_the_path_case_setting(tmp_path: Any) -> None:
    from tests.conftest import subprocess_env

    path = tmp_path / "pygate.toml"
    path.write_text(config("http://127.0.0.1:9", 'path_case = "insensitive"'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pygate", "explain", "-c", str(path), "GET", "/API/ORDERS",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=subprocess_env())
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert "'orders'" in out.decode() and "MATCH" in out.decode()


# ---------------------------------------------------------------------------
# 4. Duplicate credentials and hosts
# ---------------------------------------------------------------------------


async def test_duplicate_authorization_host_content_length_get_400(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    good = f"Authorization: Bearer {token()}"
    for request in (
        raw("GET", "/api/orders/1", good, "Authorization: Bearer forged"),
        raw("GET", "/api/orders/1", "Authorization: Bearer forged", good),
        raw("GET", "/api/profile", "Host: other"),
        raw("POST", "/api/profile", "Content-Length: 2", "Content-Length: 2", body=b"ok"),
    ):
        exchange = await raw_exchange(gw.port, request)
        [response] = exchange.responses
        assert response.status == 400, (request, response.body)
        assert problem(response.body)["status"] == 400
        assert exchange.closed
    assert up.seen == []
    assert_no_traceback(gw)


# ---------------------------------------------------------------------------
# 3. Client input that must never make a 500
# ---------------------------------------------------------------------------


async def test_non_ascii_bytes_in_a_bearer_token_are_401_malformed(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    for credential in (b"Bearer \xc3\xa9", b"Bearer a\xff.b.c", b"Bearer eyJ\x80.e30.x"):
        request = (b"GET /api/orders/1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                   b"Authorization: " + credential + b"\r\n\r\n")
        exchange = await raw_exchange(gw.port, request)
        [response] = exchange.responses
        assert response.status == 401, (credential, response.body)
        assert problem(response.body)["detail"] == "the token is malformed"
        assert "invalid_token" in response.headers["WWW-Authenticate"]
    assert up.seen == []
    assert_no_traceback(gw)


async def test_malformed_websocket_key_is_400(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))

    for key in (b"\xc3\xa9\xc3\xa9", b"not base64 at all!", b"c2hvcnQ=", b""):
        request = (b"GET /api/chat HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
        exchange = await raw_exchange(gw.port, request, read_for=2.0)
        [response] = exchange.responses
        assert response.status == 400, (key, response.body)
        assert problem(response.body)["detail"] == "malformed WebSocket handshake"
    assert up.seen == []
    assert_no_traceback(gw)


async def test_body_cut_short_by_the_client_is_its_doing(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """A POST whose client leaves mid-body: logged at info as 499, no traceback,
    no 500; the upstream request is abandoned and the gateway serves on."""
    up = await upstream(echo)
    gw = await gateway_process(config(up.url) + "\n[plugins.logging]\nformat = \"json\"\n")

    for head in (b"Content-Length: 100000\r\n", b"Transfer-Encoding: chunked\r\n"):
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        chunk = b"abc" if b"Length" in head else b"3\r\nabc\r\n"
        writer.write(b"POST /api/upload HTTP/1.1\r\nHost: gw\r\n" + head + b"\r\n" + chunk)
        await writer.drain()
        await asyncio.sleep(0.3)  # the gateway is streaming the body upstream by now
        writer.close()
        await asyncio.sleep(0.3)

    exchange = await raw_exchange(gw.port, raw("GET", "/api/still-serving"))
    assert [r.status for r in exchange.responses] == [200]
    assert_no_traceback(gw)


async def test_body_cut_short_access_line_is_499(upstream: UpstreamFactory) -> None:
    from pygate.testing import start_gateway
    from tests.conftest import Recorder

    async def slow_reader(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"read": True})

    up = await upstream(slow_reader)
    recorder = Recorder()
    gw = await start_gateway({
        "plugins": {"recorder": {}},
        "routes": [{"name": "upload", "path": "/up", "upstream": up.url},
                   {"name": "agg", "path": "/agg", "methods": ["POST"],
                    "aggregate": {"calls": {"a": {"upstream": up.url, "path": "/a"}}}}],
    }, plugins={"recorder": recorder})
    try:
        port = gw.running.port
        for path in ("/up/x", "/agg"):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n"
                         .encode() + b"x" * 10)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
        for _ in range(100):
            if len(recorder.records) >= 1:
                break
            await asyncio.sleep(0.05)
        record = recorder.records[0]
        assert record["status"] == 499, record
        assert record["route"] == "upload"
        assert record["error"] == "the client closed the connection"
        status, _, _ = await gw.request("GET", "/up/after")
        assert status == 200
        assert all(r["status"] < 500 for r in recorder.records), recorder.records
    finally:
        await gw.close()


# ---------------------------------------------------------------------------
# 8. Header injection through a plugin
# ---------------------------------------------------------------------------


class Injector:
    """A plugin whose ``transform_request`` writes what it is told into the request."""

    PRIORITY = 10

    def __init__(self, **changes: Any) -> None:
        self.changes = changes

    @hookimpl
    def transform_request(self, upstream_request: Any) -> None:
        for name, value in self.changes.items():
            if name == "header":
                upstream_request.headers.add(*value)
            else:
                setattr(upstream_request, name, value)


INJECTIONS = {
    "CRLF in a header value": {"header": ("X-Note", "ok\r\nX-User-Role: admin")},
    "CRLF and colon in a header name": {"header": ("X-A: 1\r\nX-User-Role", "admin")},
    "space in a header name": {"header": ("Transfer-Encoding ", "chunked")},
    "CRLF in the path": {"path": "/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /admin"},
    "CRLF in the query": {"query": "a=1 HTTP/1.1\r\nX-Injected: 1"},
    "a method that is not a token": {"method": "GET /admin HTTP/1.1\r\n"},
}


async def test_plugin_cannot_inject_bytes_into_the_upstream_request(
        raw_upstream: Any, upstream: UpstreamFactory) -> None:
    from structlog.testing import capture_logs

    from pygate.testing import start_gateway

    received = bytearray()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read(65536))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    up = await raw_upstream(record)
    for case, changes in INJECTIONS.items():
        gw = await start_gateway({
            "plugins": {"injector": {}},
            "routes": [{"name": "api", "path": "/api", "upstream": up.url},
                       {"name": "agg", "path": "/agg",
                        "aggregate": {"calls": {"a": {"upstream": up.url, "path": "/a"}}}}],
        }, plugins={"injector": Injector(**changes)})
        try:
            for path, headers in (("/api/x", {}), ("/agg", {}), ("/api/ws", WS_UPGRADE)):
                with capture_logs() as logs:
                    status, _, body = await gw.request("GET", path, headers=headers)
                assert status == 500, (case, path, body)
                assert body["detail"] == "the gateway could not process this request"
                named = [entry for entry in logs if entry.get("plugin") == "injector"]
                assert named and named[0]["hook"] == "transform_request", (case, logs)
        finally:
            await gw.close()
    assert up.connections == 0 and received == b""  # never a byte on the wire


WS_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize("guilty", ["first", "second"])
async def test_the_plugin_that_broke_the_request_is_named_in_a_chain_of_two(
        raw_upstream: Any, guilty: str) -> None:
    """The head is checked after each step: the first plugin's damage names it, not the
    second that ran after it; the second's names the second (the last step's request
    is checked as its head is built)."""
    from structlog.testing import capture_logs

    from pygate.testing import start_gateway

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    up = await raw_upstream(record)
    bad, good = Injector(header=("X-Note", "ok\r\nX-User-Role: admin")), Injector(
        header=("X-Fine", "yes"))
    first, second = (bad, good) if guilty == "first" else (good, bad)
    first.PRIORITY, second.PRIORITY = 20, 10  # type: ignore[misc]  # first runs first
    gw = await start_gateway({
        "plugins": {"one": {}, "two": {}},
        "routes": [{"name": "api", "path": "/api", "upstream": up.url}],
    }, plugins={"one": first, "two": second})
    try:
        with capture_logs() as logs:
            status, _, _ = await gw.request("GET", "/api/x")
    finally:
        await gw.close()
    assert status == 500
    blamed = {entry["plugin"] for entry in logs
              if entry.get("hook") == "transform_request" and "plugin" in entry}
    assert blamed == {"one" if guilty == "first" else "two"}
    assert up.connections == 0


# ---------------------------------------------------------------------------
# Compressed request bodies go through as they came
# ---------------------------------------------------------------------------


async def test_compressed_request_body_is_forwarded_byte_for_byte(
        gateway_process: GatewayFactory, raw_upstream: Any) -> None:
    """A gzip body that decompresses into a whole second request: were the gateway to
    decompress it, the upstream would read more bytes than the Content-Length it was
    sent, and the hidden request after them as the next one on the pooled connection."""
    import gzip
    import zlib

    received = bytearray()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            received.extend(head + await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    up = await raw_upstream(record)
    gw = await gateway_process(config(up.url))
    hidden = b"x" * 32 + b"GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"
    for body in (gzip.compress(hidden), zlib.compress(hidden), b"\x1f\x8b not gzip at all"):
        encoding = "deflate" if body[:1] == b"x" else "gzip"
        exchange = await raw_exchange(gw.port, raw(
            "POST", "/api/upload", f"Content-Encoding: {encoding}",
            f"Content-Length: {len(body)}", body=body))
        assert [r.status for r in exchange.responses] == [200]
        assert received.endswith(body), "the upstream got other bytes than the client sent"
        assert f"Content-Encoding: {encoding}".encode() in received
    assert b"/admin" not in received
    assert up.connections == 1  # every request on the one pooled connection, in step
    assert_no_traceback(gw)


async def test_connect_and_upgrades_the_gateway_does_not_take(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    """The HTTP parser reads no more HTTP after CONNECT or an Upgrade: what follows on the
    connection must never be forwarded as a body or as a request of its own."""
    up = await upstream(echo)
    gw = await gateway_process(config(up.url))
    second = b"GET /api/second HTTP/1.1\r\nHost: gw\r\n\r\n"

    exchange = await raw_exchange(gw.port, b"CONNECT /api/x HTTP/1.1\r\nHost: gw\r\n\r\n"
                                  + second)
    [response] = exchange.responses
    assert response.status == 405 and exchange.closed
    assert "CONNECT" in problem(response.body)["detail"]

    # a WebSocket upgrade the gateway does not take (not a GET): the parser reads no
    # more HTTP after it, so the connection closes after the answer
    exchange = await raw_exchange(gw.port, raw("POST", "/api/x", "Connection: upgrade",
                                               "Upgrade: websocket", "Content-Length: 5",
                                               body=b"hello").replace(
                                                   b"Connection: close\r\n", b"") + second)
    [response] = exchange.responses
    assert response.status == 200 and exchange.closed
    assert json.loads(response.body)["body_size"] == 5
    assert [seen.path for seen in up.seen] == ["/api/x"]

    # any other Upgrade (curl's h2c attempt) is hop-by-hop: the connection stays HTTP
    h2c = (b"GET /api/y HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    exchange = await raw_exchange(gw.port, h2c, second, pause=0.3)
    assert [r.status for r in exchange.responses] == [200, 200]
    assert [seen.path for seen in up.seen] == ["/api/x", "/api/y", "/api/second"]
    assert_no_traceback(gw)
