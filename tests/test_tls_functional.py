"""TLS at the edge (PRODUCT.md section 10) against real ``pygate serve`` processes.

Certificates are made for each test by ``trustme`` and written beside the
configuration (``certs/``, relative paths). Clients are ``ssl`` contexts over asyncio
streams, offering only ``http/1.1`` by ALPN, so each test sees what a client sees:
the certificate served (its names, its serial), the response, or a refused handshake.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from pygate import Context, hookimpl
from tests.admin_support import Admin, admin_section, eventually
from tests.conftest import (
    GatewayProcess,
    RawResponse,
    ServeFactory,
    UpstreamFactory,
    free_port,
    parse_responses,
    problem,
    raw_exchange,
    subprocess_env,
)
from tests.test_tls import Pki, dns_names, serial_of

SERVER_NAME = "gateway.test"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.make(tmp_path / "certs")


def config(upstream_url: str, tls: str = "", gateway: str = "", extra: str = "") -> str:
    """A pygate.toml with ``[gateway.tls]`` (the default pair, then ``tls``) and /api."""
    return f"""
[gateway]
{gateway}

[gateway.tls]
cert = "certs/gw.pem"
key = "certs/gw.key"
{tls}

[[routes]]
name = "api"
path = "/api"
upstream = "{upstream_url}"
{extra}"""


def events(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event") == name]


async def started(gw: GatewayProcess, event: str = "listening",
                  within: float = 20.0) -> dict[str, Any]:
    """Wait for the gateway's ``event`` log line (``listening``, ``workers ready``)."""
    deadline = time.monotonic() + within
    while True:
        found = events(gw, event)
        if found:
            return found[0]
        if gw.proc.returncode is not None:
            pytest.fail(f"pygate serve exited with {gw.proc.returncode}:\n{gw.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {event!r} within {within}s:\n{gw.stderr()}")
        await asyncio.sleep(0.02)


class Tls:
    """A client connection over TLS: the certificate it was served, and its requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext,
                   server_name: str | None = SERVER_NAME) -> Tls:
        """``server_name`` is sent by SNI (None: no SNI, and no name check)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=server_name or ""), 10.0)
        return cls(reader, writer)

    @property
    def peer(self) -> dict[str, Any]:
        peer = self.ssl_object.getpeercert()
        assert peer is not None
        return dict(peer)

    @property
    def serial(self) -> str:
        return str(self.peer["serialNumber"]).lstrip("0")

    async def get(self, path: str, host: str = SERVER_NAME) -> RawResponse:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10.0)
        response = parse_responses(head)[0]
        if "Content-Length" in response.headers:
            body = await self.reader.readexactly(int(response.headers["Content-Length"]))
        else:  # chunked
            data = await asyncio.wait_for(self.reader.readuntil(b"\r\n0\r\n\r\n"), 10.0)
            body = parse_responses(head + data)[0].body
        response.body = body
        return response

    def close(self) -> None:
        self.writer.close()


async def get(port: int, context: ssl.SSLContext, path: str,
              server_name: str | None = SERVER_NAME) -> tuple[RawResponse, Tls]:
    conn = await Tls.open(port, context, server_name)
    try:
        return await conn.get(path), conn
    finally:
        conn.close()


async def refused(port: int, context: ssl.SSLContext) -> str:
    """Connect and ask; what refused it (a TLS 1.3 client finishes its handshake before
    the server has checked its certificate: the refusal comes on the first read)."""
    try:
        conn = await Tls.open(port, context)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"handshake: {type(exc).__name__}"
    try:
        conn.writer.write(b"GET /api/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        data = await asyncio.wait_for(conn.reader.read(65536), 10.0)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"first read: {type(exc).__name__}"
    finally:
        conn.close()
    assert data == b"", f"a response came: {data[:200]!r}"
    return "closed"


def quiet(gw: GatewayProcess) -> None:
    """Nothing above info in the gateway's log, and no traceback."""
    loud = [e for e in gw.log_events() if e.get("level") in ("warning", "error", "critical")]
    assert not loud, loud
    stderr = gw.stderr()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


# ---------------------------------------------------------------------------
# Serving HTTPS
# ---------------------------------------------------------------------------


async def test_https_proxies_to_the_upstream_with_forwarded_proto_and_hsts(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME)
    gw = await serve(config(up.url, 'hsts = "365d"'))
    line = await started(gw)
    assert line["url"] == f"https://127.0.0.1:{gw.port}"

    conn = await Tls.open(gw.port, pki.client())
    try:
        assert conn.ssl_object.selected_alpn_protocol() == "http/1.1"
        response = await conn.get("/api/orders?id=7")
        assert response.status == 200
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        seen = json.loads(response.body)
        assert seen["path"] == "/orders?id=7"  # the route strips its prefix
        assert up.last.headers["X-Forwarded-Proto"] == "https"
        assert up.last.headers["X-Forwarded-Host"] == SERVER_NAME

        missing = await conn.get("/nowhere")  # same connection: a problem document
        assert missing.status == 404
        assert problem(missing.body)["status"] == 404
        assert missing.headers["Strict-Transport-Security"] == "max-age=31536000"
    finally:
        conn.close()
    quiet(gw)


async def test_sni_chooses_the_certificate_by_its_names(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME, "127.0.0.1")
    pki.issue("apps", "*.apps.example.com")
    pki.issue("api", "api.example.com", "api.example.org")
    gw = await serve(config(up.url, 'certs = [{ cert = "certs/apps.pem", key = "certs/apps.key" },'
                            ' { cert = "certs/api.pem", key = "certs/api.key" }]'))
    await started(gw)
    unchecked = pki.client(server_name_check=False)
    for server_name, context, names in [
        ("api.example.com", pki.client(), ["api.example.com", "api.example.org"]),
        ("api.example.org", pki.client(), ["api.example.com", "api.example.org"]),
        ("shop.apps.example.com", pki.client(), ["*.apps.example.com"]),  # the wildcard
        ("a.b.apps.example.com", unchecked, [SERVER_NAME]),  # one label only: the default
        ("unknown.test", unchecked, [SERVER_NAME]),
        (SERVER_NAME, pki.client(), [SERVER_NAME]),
        (None, unchecked, [SERVER_NAME]),  # no SNI: the default
    ]:
        response, conn = await get(gw.port, context, "/api/x", server_name)
        assert dns_names(conn.peer) == names, server_name
        assert response.status == 200
    quiet(gw)


async def test_min_version_13_refuses_a_client_capped_at_tls12(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME)
    gw = await serve(config(up.url, 'min_version = "1.3"'))
    await started(gw)
    # (the event loop's TLS transport drops the connection without flushing the alert)
    refusal = await refused(gw.port, pki.client(maximum=ssl.TLSVersion.TLSv1_2))
    assert refusal.startswith("handshake: "), refusal
    response, conn = await get(gw.port, pki.client(), "/api/x")
    assert response.status == 200 and conn.ssl_object.version() == "TLSv1.3"
    quiet(gw)


def client_hello(server_name: bytes) -> bytes:
    """A TLS ClientHello asking for ``server_name`` (any bytes, as an attacker sends them)."""
    stand_in = "s" * (len(server_name) - 5) + ".test"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=stand_in)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello.count(stand_in.encode()) == 1
    return hello.replace(stand_in.encode(), server_name)


async def test_clients_that_do_not_speak_tls_are_dropped_quietly(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME)
    pki.issue("b", "b.test")  # two certificates: SNI is looked at
    gw = await serve(config(up.url, 'certs = [{ cert = "certs/b.pem", key = "certs/b.key" }]'))
    await started(gw)
    plain = await raw_exchange(gw.port, b"GET /api/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
    assert plain.closed and b"HTTP/1.1 200" not in plain.data
    garbage = await raw_exchange(gw.port, os.urandom(600))
    assert garbage.closed
    # a ClientHello cut short, then the client vanishes
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))
    await writer.drain()
    writer.close()
    # a server name that is not ASCII (the ssl module cannot decode it for the callback)
    odd = await raw_exchange(gw.port, client_hello(b"\xff\xfe\xc3\xa9xx.test"))
    assert odd.closed and not odd.data.startswith(b"\x16")  # no ServerHello
    # a TLS client that goes away right after its handshake
    conn = await Tls.open(gw.port, pki.client())
    conn.writer.transport.abort()

    response, _ = await get(gw.port, pki.client(), "/api/x")
    assert response.status == 200
    assert [s.path for s in up.seen] == ["/x"]  # nothing else went upstream
    quiet(gw)


# ---------------------------------------------------------------------------
# The redirect listener
# ---------------------------------------------------------------------------


async def test_redirect_http_answers_308_to_the_https_url(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME, "127.0.0.1")
    redirect_port = free_port()
    gw = await serve(config(up.url, gateway=f'redirect_http = "127.0.0.1:{redirect_port}"'))
    await started(gw)
    assert events(gw, "redirecting to https")[0]["urls"] == [f"http://127.0.0.1:{redirect_port}"]

    exchange = await raw_exchange(
        redirect_port,
        b"GET /api/a%2Fb/../c?x=1&y=%zz&z HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n"
        b"POST /api/form HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /api/x?back=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    first, second, third = exchange.responses
    assert first.status == 308
    assert first.headers["Location"] == (f"https://example.com:{gw.port}"
                                         "/api/a%2Fb/../c?x=1&y=%zz&z")
    assert second.status == 308
    assert second.headers["Location"] == f"https://[::1]:{gw.port}/api/form"
    location = third.headers["Location"]
    assert location == f"https://127.0.0.1:{gw.port}/api/x?back=1"
    assert not up.seen  # the redirect listener never proxies

    # the Location works
    target = location.removeprefix(f"https://127.0.0.1:{gw.port}")
    response, _ = await get(gw.port, pki.client(), target, "127.0.0.1")
    assert response.status == 200 and up.last.path == "/x?back=1"

    for head, detail in [
        (b"GET /x HTTP/1.0\r\n", "needs one Host header with a valid host"),
        (b"GET /x HTTP/1.1\r\nHost: a b\r\n", "needs one Host header with a valid host"),
        (b"GET /x HTTP/1.1\r\nHost: evil.test@example.com\r\n", "with a valid host"),
        (b"GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n", "malformed"),  # parser
        (b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n", "must be an absolute path"),
    ]:
        bad = (await raw_exchange(redirect_port, head + b"Connection: close\r\n\r\n")
               ).responses[0]
        assert bad.status == 400, head
        assert detail in problem(bad.body)["detail"], head
        assert "Location" not in bad.headers
    assert "Traceback" not in gw.stderr()


# ---------------------------------------------------------------------------
# Reload: a renewed certificate at the same path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["signal", "admin", "watch"])
async def test_a_renewed_certificate_is_served_after_a_reload(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki,
        http: Any, trigger: str) -> None:
    up = await upstream()
    old = pki.issue("gw", SERVER_NAME)
    admin = Admin(http, free_port())
    gw = await serve(config(up.url, extra=admin_section(admin.port)),
                     *(("--watch",) if trigger == "watch" else ()))
    await started(gw)
    before = await Tls.open(gw.port, pki.client())
    try:
        assert before.serial == serial_of(old)
        assert (await before.get("/api/a")).status == 200

        async def reload(expect_ok: bool) -> None:
            count = len(events(gw, "reloaded" if expect_ok else "reload refused"))
            if trigger == "signal":
                gw.proc.send_signal(signal.SIGHUP)
            elif trigger == "admin":
                reply = await admin.reload()
                assert reply.status == (200 if expect_ok else 400), reply.text
                if not expect_ok:
                    assert [e["path"] for e in reply.json()["errors"]] == ["gateway.tls.key"]
            name = "reloaded" if expect_ok else "reload refused"
            await eventually(_now(lambda: len(events(gw, name)) > count), within=15.0,
                             what=name)

        new = pki.issue("gw", SERVER_NAME)  # the same files, a new certificate
        await reload(expect_ok=True)
        response, fresh = await get(gw.port, pki.client(), "/api/b")
        assert response.status == 200 and fresh.serial == serial_of(new) != serial_of(old)
        # the connection opened before keeps working, on the certificate it started with
        assert (await before.get("/api/c")).status == 200
        assert before.serial == serial_of(old)

        # a broken renewal (a key of another certificate) is refused; the last one serves
        other = pki.ca.issue_cert(SERVER_NAME)
        other.private_key_pem.write_to_path(str(pki.folder / "gw.key"))
        await reload(expect_ok=False)
        refusal = events(gw, "reload refused")[-1]
        assert any(line.startswith("gateway.tls.key: ") for line in refusal["errors"])
        response, fresh = await get(gw.port, pki.client(), "/api/d")
        assert response.status == 200 and fresh.serial == serial_of(new)
    finally:
        before.close()
    assert "Traceback" not in gw.stderr()


def _now(check: Any) -> Any:
    async def wrapped() -> Any:
        return check()

    return wrapped


# ---------------------------------------------------------------------------
# Client certificates
# ---------------------------------------------------------------------------


async def test_required_client_certificates(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME)
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(pki.folder / "clients.pem"))
    gw = await serve(config(up.url, 'client_ca = "certs/clients.pem"\nclient_cert = "required"'))
    await started(gw)

    assert await refused(gw.port, pki.client())  # no certificate, TLS 1.3
    assert await refused(gw.port, pki.client(maximum=ssl.TLSVersion.TLSv1_2))
    stranger = trustme.CA().issue_cert("stranger.test")  # signed by another CA
    assert await refused(gw.port, pki.client(cert=stranger))
    assert not up.seen

    member = clients.issue_cert("payments.internal")
    response, _ = await get(gw.port, pki.client(cert=member), "/api/x")
    assert response.status == 200 and len(up.seen) == 1
    quiet(gw)


async def test_optional_client_certificates_let_clients_without_one_pass(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME)
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(pki.folder / "clients.pem"))
    gw = await serve(config(up.url, 'client_ca = "certs/clients.pem"'))  # "optional"
    await started(gw)
    response, _ = await get(gw.port, pki.client(), "/api/x")
    assert response.status == 200
    response, _ = await get(gw.port, pki.client(cert=clients.issue_cert("svc.test")), "/api/y")
    assert response.status == 200
    # a certificate that does not verify is refused, even when optional
    assert await refused(gw.port, pki.client(cert=trustme.CA().issue_cert("stranger.test")))
    assert [s.path for s in up.seen] == ["/x", "/y"]
    quiet(gw)


class ShowClientCert:
    """A plugin answering /whoami with what ``ctx.client_cert`` holds."""

    PRIORITY = 10

    @hookimpl
    def pre_route(self, request: web.BaseRequest, ctx: Context) -> web.Response | None:
        if request.path != "/whoami":
            return None
        cert = ctx.client_cert
        return web.json_response(None if cert is None else {
            "subject": cert.subject, "cn": cert.cn, "sans": cert.sans, "serial": cert.serial,
            "not_after": cert.not_after})


async def test_plugins_read_the_verified_client_certificate(
        pygate_gateway: Any, upstream: UpstreamFactory, pki: Pki, tmp_path: Path) -> None:
    up = await upstream()
    pki.issue("gw", SERVER_NAME)
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(pki.folder / "clients.pem"))
    gateway = await pygate_gateway({
        "gateway": {"tls": {"cert": "certs/gw.pem", "key": "certs/gw.key",
                            "client_ca": "certs/clients.pem"}},
        "plugins": {"show": {}},
        "routes": [{"name": "api", "path": "/api", "upstream": up.url}],
    }, plugins={"show": ShowClientCert()}, base_dir=str(tmp_path))
    port = gateway.running.port
    assert gateway.url == f"https://127.0.0.1:{port}"

    member = clients.issue_cert("payments.internal", "svc@example.com",
                                common_name="payments-svc")
    conn = await Tls.open(port, pki.client(cert=member))
    try:
        shown = json.loads((await conn.get("/whoami")).body)
        assert shown["cn"] == "payments-svc" and shown["subject"].startswith("CN=payments-svc")
        assert shown["sans"] == [["DNS", "payments.internal"], ["email", "svc@example.com"]]
        assert shown["serial"] == serial_of(member)
        assert shown["not_after"] > time.time()
        assert json.loads((await conn.get("/whoami")).body) == shown  # the next request too
    finally:
        conn.close()
    response, _ = await get(port, pki.client(), "/whoami")  # optional: without one
    assert json.loads(response.body) is None


# ---------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------


def check(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygate", "check", "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60, env=subprocess_env(),
                          cwd=config_path.parent)


@pytest.mark.parametrize(("case", "path", "message"), [
    ("missing", "gateway.tls.cert", "cannot read"),
    ("not pem", "gateway.tls.key", "holds no PEM private key"),
    ("wrong key", "gateway.tls.certs[1].key", "is not the key of the certificate"),
    ("expired", "gateway.tls.cert", "expired on"),
    ("client ca", "gateway.tls.client_ca", "cannot read"),
])
def test_certificate_problems_are_configuration_errors(
        tmp_path: Path, pki: Pki, case: str, path: str, message: str) -> None:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    pki.issue("gw", SERVER_NAME)
    pki.issue("b", "b.test")
    pki.issue("c", "c.test")
    tls = ""
    if case == "missing":
        (pki.folder / "gw.pem").unlink()
    elif case == "not pem":
        (pki.folder / "gw.key").write_text("-----BEGIN NOTHING-----\n")
    elif case == "wrong key":
        tls = ('certs = [{ cert = "certs/b.pem", key = "certs/b.key" },'
               ' { cert = "certs/c.pem", key = "certs/b.key" }]')
    elif case == "expired":
        pki.issue("gw", SERVER_NAME, not_before=now - datetime.timedelta(days=9),
                  not_after=now - datetime.timedelta(days=2))
    else:
        tls = 'client_ca = "certs/absent.pem"'
    config_path = tmp_path / "pygate.toml"
    config_path.write_text(config("http://127.0.0.1:1", tls))
    result = check(config_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"  {path}: " in result.stderr and message in result.stderr, result.stderr
    assert "1 configuration error" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def test_serve_refuses_to_start_with_a_broken_certificate(
        serve: ServeFactory, pki: Pki) -> None:
    pki.issue("gw", SERVER_NAME)
    pki.issue("b", "b.test")
    (pki.folder / "gw.key").write_bytes((pki.folder / "b.key").read_bytes())
    gw = await serve(config("http://127.0.0.1:1"))
    assert await gw.exit_code(within=20.0) == 1
    assert "gateway.tls.key: " in gw.stderr() and "Traceback" not in gw.stderr()
    assert not events(gw, "listening")


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


async def test_workers_serve_https_reload_certificates_and_redirect(
        serve: ServeFactory, upstream: UpstreamFactory, pki: Pki) -> None:
    up = await upstream()
    old = pki.issue("gw", SERVER_NAME)
    redirect_port = free_port()
    gw = await serve(config(up.url, gateway=f'redirect_http = "127.0.0.1:{redirect_port}"'),
                     "--workers", "2")
    ready = await started(gw, "workers ready")
    assert ready["url"] == f"https://127.0.0.1:{gw.port}"
    assert len(events(gw, "listening")) == 2

    async def serials(count: int = 12) -> set[str]:
        found = set()
        for _ in range(count):  # new connections, spread over both workers by the kernel
            response, conn = await get(gw.port, pki.client(), "/api/x")
            assert response.status == 200
            found.add(conn.serial)
        return found

    assert await serials() == {serial_of(old)}
    for _ in range(6):
        moved = (await raw_exchange(redirect_port, b"GET /api/r?q HTTP/1.1\r\nHost: a.test\r\n"
                                    b"Connection: close\r\n\r\n")).responses[0]
        assert moved.status == 308
        assert moved.headers["Location"] == f"https://a.test:{gw.port}/api/r?q"

    new = pki.issue("gw", SERVER_NAME)
    gw.proc.send_signal(signal.SIGHUP)
    await eventually(_now(lambda: len(events(gw, "reloaded")) == 2), within=15.0,
                     what="both workers reloaded")
    assert await serials() == {serial_of(new)}
    pids = {e.get("pid") for e in events(gw, "reloaded")}
    assert len(pids) == 2, pids
    assert "Traceback" not in gw.stderr()
    assert await gw.terminate() == 0
