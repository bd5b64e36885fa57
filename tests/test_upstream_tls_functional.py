"""TLS to upstreams end to end: real ``pygate serve`` processes, real HTTPS upstreams.

Every upstream here is an aiohttp server on loopback speaking TLS with a certificate
made by ``trustme`` (a private CA per test); it answers with what it saw of the
connection (TLS or not, the SNI name asked for, the client certificate's common name,
the client's port). The gateway reads the CA, client certificate and key files from
``certs/`` beside its configuration file, as a deployment would.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import GatewayFactory, GatewayProcess, problem

# ---------------------------------------------------------------------------
# HTTPS upstreams
# ---------------------------------------------------------------------------


@dataclass
class TlsUpstream:
    """A loopback HTTPS server and what it saw."""

    port: int
    sni: list[str | None] = field(default_factory=list)  # the name asked for, per handshake
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TlsUpstreams = Callable[..., Awaitable[TlsUpstream]]


def connection_facts(request: web.Request) -> dict[str, Any]:
    """What the upstream knows of the connection a request came on."""
    transport = request.transport
    assert transport is not None
    peer = transport.get_extra_info("peercert") or {}
    names = dict(part for rdn in peer.get("subject", ()) for part in rdn)
    return {"path": request.path, "secure": request.secure,
            "client_cn": names.get("commonName"),
            "client_port": transport.get_extra_info("peername")[1]}


@pytest.fixture
async def tls_upstream() -> AsyncIterator[TlsUpstreams]:
    """Factory: ``up = await tls_upstream(leaf_cert, client_ca=None, routes=None)``.

    Without ``routes`` every path answers with :func:`connection_facts` as JSON. With
    ``client_ca`` the server asks for a client certificate signed by it and refuses
    the handshake without one.
    """
    runners: list[web.AppRunner] = []

    async def factory(cert: trustme.LeafCert | tuple[Path, Path], *,
                      client_ca: trustme.CA | None = None,
                      routes: Mapping[str, Handler] | None = None) -> TlsUpstream:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if isinstance(cert, tuple):
            context.load_cert_chain(*cert)
        else:
            cert.configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        upstream = TlsUpstream(port=0)

        def on_sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            upstream.sni.append(name)

        context.sni_callback = on_sni  # type: ignore[assignment]

        async def facts(request: web.Request) -> web.Response:
            seen = connection_facts(request)
            upstream.seen.append(seen)
            return web.json_response(seen)

        app = web.Application()
        for key, handler in (routes or {"*": facts}).items():
            method, _, path = key.partition(" ")
            app.router.add_route(method, path or "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        runners.append(runner)
        upstream.port = int(runner.addresses[0][1])
        return upstream

    yield factory
    for runner in runners:
        await runner.cleanup()


# ---------------------------------------------------------------------------
# Certificates as files beside the configuration
# ---------------------------------------------------------------------------


def write_ca(tmp_path: Path, ca: trustme.CA, name: str) -> str:
    """Write ``ca``'s certificate under ``tmp_path/certs``; the path the config names."""
    (tmp_path / "certs").mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(tmp_path / "certs" / name))
    return f"certs/{name}"


def write_pair(tmp_path: Path, leaf: trustme.LeafCert, name: str) -> tuple[str, str]:
    """Write a certificate (with its chain) and its key; the paths the config names."""
    (tmp_path / "certs").mkdir(parents=True, exist_ok=True)
    cert, key = tmp_path / "certs" / f"{name}.pem", tmp_path / "certs" / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return f"certs/{name}.pem", f"certs/{name}.key"


def self_signed(tmp_path: Path, host: str) -> tuple[Path, Path]:
    """A certificate signed by its own key (no CA at all)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "self-signed.pem", tmp_path / "self-signed.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def route(name: str, upstream: str) -> str:
    return f'[[routes]]\nname = "{name}"\npath = "/{name}"\nupstream = "{upstream}"\n'


async def get(http: aiohttp.ClientSession, gw: GatewayProcess, path: str
              ) -> tuple[int, Any]:
    async with http.get(gw.url + path) as response:
        raw = await response.read()
        body = json.loads(raw) if raw else None
        return response.status, body


async def logged(gw: GatewayProcess, event: str, within: float = 10.0,
                 **fields: Any) -> dict[str, Any]:
    """Wait until the gateway has logged ``event`` with these ``fields``; that line."""
    deadline = time.monotonic() + within
    while True:
        for line in gw.log_events():
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event!r} {fields} within {within}s:\n{gw.stderr()}")
        await asyncio.sleep(0.05)


def events(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in gw.log_events() if line.get("event") == event]


def assert_names_no_address(body: Any, upstream: TlsUpstream) -> None:
    text = json.dumps(body)
    assert "127.0.0.1" not in text and str(upstream.port) not in text, text


async def reload(gw: GatewayProcess, generation: int) -> None:
    """SIGHUP, then wait for the reload that makes ``generation``."""
    assert gw.proc.returncode is None
    gw.proc.send_signal(signal.SIGHUP)
    await logged(gw, "reloaded", generation=generation)


# ---------------------------------------------------------------------------
# Verification against a private CA
# ---------------------------------------------------------------------------


async def test_proxies_to_an_upstream_signed_by_a_private_ca(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    ca = trustme.CA()
    up = await tls_upstream(ca.issue_cert("127.0.0.1"))
    gw = await gateway_process(f"""
[upstreams.payments]
targets = ["{up.url}"]
tls = {{ ca = "{write_ca(tmp_path, ca, "internal-ca.pem")}" }}

{route("pay", "payments")}
""")
    for _ in range(3):
        status, body = await get(http, gw, "/pay/charges")
        assert status == 200, body
        assert body["secure"] is True and body["path"] == "/charges"
    # one pooled connection, kept alive: the handshake happened once
    assert len({seen["client_port"] for seen in up.seen}) == 1
    assert len(up.sni) == 1


@pytest.mark.parametrize("failure", ["another CA", "another name", "expired"])
async def test_a_certificate_that_does_not_verify_is_a_502_naming_no_address(
        failure: str, tmp_path: Path, gateway_process: GatewayFactory,
        tls_upstream: TlsUpstreams, http: aiohttp.ClientSession) -> None:
    trusted = trustme.CA()
    if failure == "another CA":
        cert, reason = trustme.CA().issue_cert("127.0.0.1"), "unable to get local issuer"
    elif failure == "another name":
        cert, reason = trusted.issue_cert("billing.internal"), "IP address mismatch"
    else:
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        cert = trusted.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30),
                                  not_after=past)
        reason = "certificate has expired"
    up = await tls_upstream(cert)
    gw = await gateway_process(f"""
[upstreams.payments]
targets = ["{up.url}"]
tls = {{ ca = "{write_ca(tmp_path, trusted, "ca.pem")}" }}

{route("pay", "payments")}
""")
    status, body = await get(http, gw, "/pay/charges")
    assert status == 502
    doc = problem(body)
    assert doc["detail"] == "upstream 'payments' failed the TLS handshake"
    assert_names_no_address(doc, up)
    assert up.seen == []  # nothing was sent
    line = await logged(gw, "upstream TLS handshake failed", upstream="payments")
    assert reason in line["reason"], line
    assert line["request_id"] == doc["request_id"]


async def test_a_failing_handshake_opens_the_breaker_and_is_not_retried_on_its_target(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    up = await tls_upstream(trustme.CA().issue_cert("127.0.0.1"))
    gw = await gateway_process(f"""
[upstreams.payments]
targets = ["{up.url}"]
retries = 3
breaker = {{ failures = 3, cooldown = "1m" }}
tls = {{ ca = "{write_ca(tmp_path, trustme.CA(), "wrong-ca.pem")}" }}

{route("pay", "payments")}
""")
    for attempt in range(3):
        status, body = await get(http, gw, "/pay/x")
        assert status == 502, body
        assert problem(body)["detail"] == "upstream 'payments' failed the TLS handshake"
        # one handshake per request: the same target would fail the same way again
        await logged(gw, "upstream TLS handshake failed")
        assert len(events(gw, "upstream TLS handshake failed")) == attempt + 1
    opened = await logged(gw, "breaker open", upstream="payments")
    assert opened["reason"].startswith("TLS handshake failed: certificate verify failed")
    status, body = await get(http, gw, "/pay/x")
    assert status == 503
    assert problem(body)["detail"] == ("no healthy target in upstream 'payments': "
                                       "the circuit breaker is open")
    assert_names_no_address(body, up)
    assert events(gw, "upstream retry") == []
    assert len(events(gw, "upstream TLS handshake failed")) == 3


async def test_a_failed_handshake_is_retried_on_another_target(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    ca = trustme.CA()
    good = await tls_upstream(ca.issue_cert("127.0.0.1"))
    bad = await tls_upstream(trustme.CA().issue_cert("127.0.0.1"))
    gw = await gateway_process(f"""
[upstreams.payments]
targets = ["{bad.url}", "{good.url}"]
tls = {{ ca = "{write_ca(tmp_path, ca, "ca.pem")}" }}

{route("pay", "payments")}
""")
    for _ in range(4):  # round-robin starts on each target in turn
        status, body = await get(http, gw, "/pay/x")
        assert status == 200, body
    assert len(good.seen) == 4 and bad.seen == []
    retry = await logged(gw, "upstream retry", target=bad.url, next_target=good.url)
    assert retry["reason"].startswith("TLS handshake failed")


# ---------------------------------------------------------------------------
# server_name, client certificates, verify = false
# ---------------------------------------------------------------------------


async def test_server_name_is_the_sni_and_the_name_checked(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    ca = trustme.CA()
    up = await tls_upstream(ca.issue_cert("payments.internal"))  # not valid for 127.0.0.1
    ca_file = write_ca(tmp_path, ca, "ca.pem")
    gw = await gateway_process(f"""
[upstreams.named]
targets = ["{up.url}"]
tls = {{ ca = "{ca_file}", server_name = "payments.internal" }}

[upstreams.by-address]
targets = ["{up.url}"]
tls = {{ ca = "{ca_file}" }}

{route("named", "named")}
{route("bare", "by-address")}
""")
    status, body = await get(http, gw, "/named/x")
    assert status == 200, body
    assert up.sni == ["payments.internal"]
    status, body = await get(http, gw, "/bare/x")
    assert status == 502
    assert problem(body)["detail"] == "upstream 'by-address' failed the TLS handshake"
    line = await logged(gw, "upstream TLS handshake failed", upstream="by-address")
    assert "IP address mismatch" in line["reason"], line
    assert len(up.seen) == 1


async def test_client_certificate_is_presented_to_an_upstream_that_requires_one(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    up = await tls_upstream(server_ca.issue_cert("127.0.0.1"), client_ca=client_ca)
    ca_file = write_ca(tmp_path, server_ca, "ca.pem")
    cert, key = write_pair(tmp_path, client_ca.issue_cert("gateway.internal",
                                                          common_name="pygate-edge"), "gw")
    gw = await gateway_process(f"""
[upstreams.with-cert]
targets = ["{up.url}"]
tls = {{ ca = "{ca_file}", cert = "{cert}", key = "{key}" }}

[upstreams.without]
targets = ["{up.url}"]
retries = 0
tls = {{ ca = "{ca_file}" }}

{route("with", "with-cert")}
{route("without", "without")}
""")
    status, body = await get(http, gw, "/with/x")
    assert status == 200, body
    assert body["client_cn"] == "pygate-edge"
    status, body = await get(http, gw, "/without/x")
    assert status == 502
    doc = problem(body)
    assert doc["detail"].startswith("upstream 'without' ")
    assert_names_no_address(doc, up)
    assert [seen["path"] for seen in up.seen] == ["/x"]  # only the request with a cert


async def test_verify_false_accepts_a_self_signed_upstream_and_says_so(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    up = await tls_upstream(self_signed(tmp_path, "legacy.internal"))
    gw = await gateway_process(f"""
[upstreams.legacy]
targets = ["{up.url}"]
tls = {{ verify = false }}

[upstreams.checked]
targets = ["{up.url}"]

{route("legacy", "legacy")}
{route("checked", "checked")}
""")
    warning = await logged(gw, "upstream TLS verification off", upstream="legacy")
    assert warning["level"] == "warning"
    assert [w["upstream"] for w in events(gw, "upstream TLS verification off")] == ["legacy"]
    status, body = await get(http, gw, "/legacy/x")
    assert status == 200 and body["secure"] is True
    status, body = await get(http, gw, "/checked/x")  # system CAs: not this certificate
    assert status == 502


# ---------------------------------------------------------------------------
# Health checks and WebSockets use the same settings
# ---------------------------------------------------------------------------


async def test_health_checks_probe_https_targets_with_the_upstreams_tls(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    ca = trustme.CA()
    ready = asyncio.Event()
    probes: list[dict[str, Any]] = []

    async def health(request: web.Request) -> web.Response:
        probes.append(connection_facts(request))
        return web.Response(status=200 if ready.is_set() else 503)

    async def work(request: web.Request) -> web.Response:
        return web.json_response(connection_facts(request))

    served = await tls_upstream(ca.issue_cert("payments.internal"),
                                routes={"GET /health": health, "GET /{tail:.*}": work})
    untrusted = await tls_upstream(trustme.CA().issue_cert("payments.internal"))
    gw = await gateway_process(f"""
[upstreams.payments]
targets = ["{served.url}", "{untrusted.url}"]
retries = 0
health = {{ path = "/health", interval = "100ms", timeout = "1s", unhealthy = 1, healthy = 1 }}
tls = {{ ca = "{write_ca(tmp_path, ca, "ca.pem")}", server_name = "payments.internal" }}

{route("pay", "payments")}
""")
    down = await logged(gw, "target unhealthy", target=untrusted.url)
    assert down["reason"].startswith("TLS handshake failed: certificate verify failed"), down
    await logged(gw, "target unhealthy", target=served.url, reason="status 503")
    status, body = await get(http, gw, "/pay/x")
    assert status == 503 and problem(body)["detail"] == "no healthy target in upstream 'payments'"
    ready.set()
    await logged(gw, "target healthy", target=served.url)
    for _ in range(3):
        status, body = await get(http, gw, "/pay/x")
        assert status == 200 and body["secure"] is True, body
    assert probes and all(p["secure"] and p["path"] == "/health" for p in probes)
    assert set(served.sni) == {"payments.internal"}
    assert untrusted.seen == []  # never probed past the handshake, never sent a request


async def test_websocket_to_a_wss_upstream(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    ca = trustme.CA()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        facts = connection_facts(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_json({"echo": msg.data, **facts})
        return ws

    up = await tls_upstream(ca.issue_cert("events.internal"), routes={"GET /{tail:.*}": echo})
    ca_file, other = write_ca(tmp_path, ca, "ca.pem"), write_ca(tmp_path, trustme.CA(), "o.pem")
    gw = await gateway_process(f"""
[upstreams.events]
targets = ["{up.url}"]
tls = {{ ca = "{ca_file}", server_name = "events.internal" }}

[upstreams.events-wrong-ca]
targets = ["{up.url}"]
tls = {{ ca = "{other}", server_name = "events.internal" }}

{route("ws", "events")}
{route("ws-wrong", "events-wrong-ca")}
""")
    async with http.ws_connect(gw.url.replace("http", "ws") + "/ws/feed") as ws:
        await ws.send_str("hello")
        reply = await ws.receive_json(timeout=5)
    assert reply == {"echo": "hello", "path": "/feed", "secure": True, "client_cn": None,
                     "client_port": reply["client_port"]}
    assert up.sni == ["events.internal"]

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(gw.url.replace("http", "ws") + "/ws-wrong/feed"):
            pass
    assert refused.value.status == 502
    line = await logged(gw, "upstream TLS handshake failed", upstream="events-wrong-ca")
    assert "certificate verify failed" in line["reason"]
    async with http.get(gw.url + "/ws-wrong/feed", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
        doc = problem(await response.json(content_type=None))
    assert response.status == 502
    assert doc["detail"] == "upstream 'events-wrong-ca' failed the TLS handshake"
    assert_names_no_address(doc, up)


# ---------------------------------------------------------------------------
# Reload
# ---------------------------------------------------------------------------


async def test_reload_keeps_unchanged_pools_and_rebuilds_changed_tls(
        tmp_path: Path, gateway_process: GatewayFactory, tls_upstream: TlsUpstreams,
        http: aiohttp.ClientSession) -> None:
    ca, other = trustme.CA(), trustme.CA()
    steady = await tls_upstream(ca.issue_cert("127.0.0.1"))
    moving = await tls_upstream(ca.issue_cert("127.0.0.1"))
    good, wrong = write_ca(tmp_path, ca, "ca.pem"), write_ca(tmp_path, other, "other.pem")
    renewed = write_ca(tmp_path, other, "renewed.pem")  # its content changes below

    def config(moving_ca: str) -> str:
        return f"""
[upstreams.steady]
targets = ["{steady.url}"]
tls = {{ ca = "{good}" }}

[upstreams.moving]
targets = ["{moving.url}"]
retries = 0
tls = {{ ca = "{moving_ca}" }}

{route("steady", "steady")}
{route("moving", "moving")}
"""

    gw = await gateway_process(config(good))
    assert (await get(http, gw, "/steady/a"))[0] == 200
    assert (await get(http, gw, "/moving/a"))[0] == 200

    # moving's tls changes: new pool, new context (the wrong CA now)
    gw.config_path.write_text(config(wrong))
    await reload(gw, 2)
    assert (await get(http, gw, "/steady/b"))[0] == 200
    assert (await get(http, gw, "/moving/b"))[0] == 502
    # steady's pool was kept: its keep-alive connection carried on across the reload
    assert len({seen["client_port"] for seen in steady.seen}) == 1
    assert len(steady.sni) == 1

    # the same table, but the file it names is renewed: that is a change too
    gw.config_path.write_text(config(renewed))
    await reload(gw, 3)
    assert (await get(http, gw, "/moving/c"))[0] == 502
    (tmp_path / renewed).write_bytes(ca.cert_pem.bytes())
    await reload(gw, 4)
    status, body = await get(http, gw, "/moving/c")
    assert status == 200, body
    assert len({seen["client_port"] for seen in steady.seen}) == 1


# ---------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------


def pygate_check(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygate", "check", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def test_pygate_check_reports_each_tls_problem_with_its_key_path(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    (folder / "certs").mkdir(parents=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "certs" / "ca.pem"))
    (folder / "certs" / "notes.txt").write_text("not a certificate\n")
    one, two = ca.issue_cert("a.internal"), ca.issue_cert("b.internal")
    one.cert_chain_pems[0].write_to_path(str(folder / "certs" / "one.pem"))
    one.private_key_pem.write_to_path(str(folder / "certs" / "one.key"))
    two.private_key_pem.write_to_path(str(folder / "certs" / "two.key"))
    locked = serialization.load_pem_private_key(one.private_key_pem.bytes(), None)
    (folder / "certs" / "locked.key").write_bytes(locked.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    config = folder / "pygate.toml"
    config.write_text("""
[upstreams.missing-ca]
targets = ["https://10.0.0.1:8443"]
tls = { ca = "certs/nope.pem" }

[upstreams.not-pem]
targets = ["https://10.0.0.2:8443"]
tls = { ca = "certs/notes.txt" }

[upstreams.cert-only]
targets = ["https://10.0.0.3:8443"]
tls = { cert = "certs/one.pem" }

[upstreams.mismatch]
targets = ["https://10.0.0.4:8443"]
tls = { cert = "certs/one.pem", key = "certs/two.key" }

[upstreams.encrypted]
targets = ["https://10.0.0.5:8443"]
tls = { cert = "certs/one.pem", key = "certs/locked.key" }

[upstreams.plain]
targets = ["http://10.0.0.6:8080"]
tls = { ca = "certs/ca.pem" }

[upstreams.bad-name]
targets = ["https://10.0.0.7:8443"]
tls = { server_name = "payments internal" }

[[routes]]
name = "r"
path = "/"
upstream = "missing-ca"
""")
    done = pygate_check(config, cwd=tmp_path)  # not the config's folder
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    errors = {line.strip().split(":", 1)[0]: line.strip().split(":", 1)[1]
              for line in done.stderr.splitlines()[1:]}
    assert set(errors) == {
        "upstreams.missing-ca.tls.ca", "upstreams.not-pem.tls.ca", "upstreams.cert-only.tls.key",
        "upstreams.mismatch.tls.key", "upstreams.encrypted.tls.key", "upstreams.plain.tls",
        "upstreams.bad-name.tls.server_name"}, done.stderr
    assert "file not found" in errors["upstreams.missing-ca.tls.ca"]
    assert str(folder / "certs" / "nope.pem") in errors["upstreams.missing-ca.tls.ca"]
    assert "holds no PEM certificate" in errors["upstreams.not-pem.tls.ca"]
    assert "required with tls.cert" in errors["upstreams.cert-only.tls.key"]
    assert "does not match the certificate" in errors["upstreams.mismatch.tls.key"]
    assert "is encrypted" in errors["upstreams.encrypted.tls.key"]
    assert "no target of this upstream is https://" in errors["upstreams.plain.tls"]
    assert "expected a host name" in errors["upstreams.bad-name.tls.server_name"]
    assert done.stderr.splitlines()[0] == f"{config}: 7 configuration errors"


def test_pygate_check_reads_tls_files_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    ca = trustme.CA()
    write_ca(folder, ca, "ca.pem")
    cert, key = write_pair(folder, ca.issue_cert("gw.internal"), "client")
    config = folder / "pygate.toml"
    config.write_text(f"""
[upstreams.payments]
targets = ["https://10.0.0.1:8443"]
tls = {{ ca = "certs/ca.pem", cert = "{cert}", key = "{key}", server_name = "pay.internal" }}

[[routes]]
name = "r"
path = "/"
upstream = "payments"
""")
    done = pygate_check(config, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: OK")


async def test_serve_refuses_an_unreadable_ca_before_listening(
        tmp_path: Path, serve: Callable[..., Awaitable[GatewayProcess]]) -> None:
    gw = await serve("""
[upstreams.payments]
targets = ["https://10.0.0.1:8443"]
tls = { ca = "certs/missing.pem" }

[[routes]]
name = "r"
path = "/"
upstream = "payments"
""")
    assert await gw.exit_code(within=20) == 1
    assert "upstreams.payments.tls.ca: file not found" in gw.stderr()
    assert "Traceback" not in gw.stderr()
