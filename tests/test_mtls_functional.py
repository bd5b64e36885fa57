"""The ``mtls`` plugin end to end: clients with ``trustme`` certificates over real TLS
connections to a ``pygate serve`` whose listener asks for them (``[gateway.tls]
client_ca``), and the identity as ``acl`` and ``headers`` see it upstream."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from cryptography import x509

from tests.conftest import GatewayFactory, GatewayProcess, UpstreamFactory, problem


def subject_of(leaf: trustme.LeafCert) -> str:
    """The certificate's subject as RFC 4514 prints it."""
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).subject \
        .rfc4514_string()


def client_context(server_ca: trustme.CA, leaf: trustme.LeafCert | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    server_ca.configure_trust(context)
    if leaf is not None:
        leaf.configure_cert(context)
    return context


async def call(gw: GatewayProcess, path: str, context: ssl.SSLContext
               ) -> tuple[int, dict[str, str], Any]:
    """One request on a new TLS connection: (status, the upstream's headers, body)."""
    async with aiohttp.ClientSession() as session, session.get(
            f"https://127.0.0.1:{gw.port}{path}", ssl=context) as response:
        body = await response.json(content_type=None)
        headers = dict(body["headers"]) if response.status == 200 else {}
        return response.status, headers, body


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    """The gateway's certificate and the CA of its clients, as files beside the config."""
    server_ca, clients_ca = trustme.CA(), trustme.CA()
    (tmp_path / "certs").mkdir()
    server = server_ca.issue_cert("127.0.0.1")
    (tmp_path / "certs" / "gateway.pem").write_bytes(
        b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(tmp_path / "certs" / "gateway.key"))
    clients_ca.cert_pem.write_to_path(str(tmp_path / "certs" / "clients.pem"))
    return {"server_ca": server_ca, "clients_ca": clients_ca}


async def test_client_certificates_become_identities_over_tls(
        pki: dict[str, Any], gateway_process: GatewayFactory,
        upstream: UpstreamFactory) -> None:
    server_ca, clients_ca = pki["server_ca"], pki["clients_ca"]
    payments = clients_ca.issue_cert("payments.internal", "payments@example.com",
                                     common_name="payments-svc")
    reports = clients_ca.issue_cert("reports.internal", common_name="reports")
    outsider = trustme.CA().issue_cert("payments.internal", common_name="payments-svc")
    # the consumer's subject written in another spelling: compared as X.500 names
    mapped = subject_of(payments).replace("CN=", "cn = ").replace(",", ", ")
    up = await upstream()
    gw = await gateway_process(f"""
[gateway.tls]
cert = "certs/gateway.pem"
key = "certs/gateway.key"
client_ca = "certs/clients.pem"
client_cert = "optional"

[plugins.mtls]
consumers = {{ payments = "{mapped}" }}

[plugins.acl]
allow = ["payments"]

[plugins.headers]
identity = {{ X-User-Id = "id", X-Consumer = "consumer", X-Client-Subject = "subject" }}

[[routes]]
name = "ledger"
path = "/ledger"
upstream = "{up.url}"

[[routes]]
name = "by-email"
path = "/by-email"
upstream = "{up.url}"
plugins = {{ mtls = {{ id = "san:email", optional = true }}, acl = false }}
""")
    status, headers, _ = await call(gw, "/ledger/entries", client_context(server_ca, payments))
    assert status == 200
    assert headers["X-User-Id"] == "payments-svc"
    assert headers["X-Consumer"] == "payments"
    assert headers["X-Client-Subject"] == subject_of(payments)
    assert headers["X-Forwarded-Proto"] == "https"

    # verified, but no consumer is named for it: acl refuses it
    status, _, body = await call(gw, "/ledger/entries", client_context(server_ca, reports))
    assert status == 403 and problem(body)["status"] == 403

    # no certificate: the plugin answers 401
    status, _, body = await call(gw, "/ledger/entries", client_context(server_ca, None))
    assert status == 401
    assert problem(body)["detail"] == "a client certificate is required"

    # a SAN as the id; optional on this route, so no certificate passes anonymously
    status, headers, _ = await call(gw, "/by-email/x", client_context(server_ca, payments))
    assert status == 200 and headers["X-User-Id"] == "payments@example.com"
    status, headers, _ = await call(gw, "/by-email/x", client_context(server_ca, None))
    assert status == 200 and "X-User-Id" not in headers

    # a certificate the listener cannot verify never gets past the handshake
    with pytest.raises(aiohttp.ClientError):
        await call(gw, "/by-email/x", client_context(server_ca, outsider))
    assert len(up.seen) == 3
