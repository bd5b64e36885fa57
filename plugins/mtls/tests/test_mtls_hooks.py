"""mtls through an in-process gateway (pygate.testing) against fake upstreams.

Each request carries its client certificate the way the TLS listener hands a verified
one to plugins: ``gateway.request(..., client_cert=ClientCert(...))``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pygate_mtls
import pytest

from pygate.plugin import ClientCert, Context, UpstreamRequest, hookimpl
from pygate.testing import start_gateway

pytest_plugins = ["pygate.testing"]

PAYMENTS = ClientCert(
    subject="CN=payments-svc,OU=Billing,O=Example",
    cn="payments-svc",
    sans=(("DNS", "payments.internal"), ("email", "payments@example.com"),
          ("URI", "spiffe://example.com/payments"), ("IP Address", "10.0.0.7")),
    serial="5A3F",
    not_after=time.time() + 86400,
)
# the same service's renewed certificate: same subject, another serial and SANs
PAYMENTS_RENEWED = ClientCert(
    subject="CN=payments-svc,OU=Billing,O=Example", cn="payments-svc",
    sans=(("DNS", "payments-2.internal"),), serial="5A40", not_after=time.time() + 86400)
REPORTS = ClientCert(subject="CN=reports,O=Example", cn="reports",
                     sans=(("DNS", "reports.internal"),), serial="77",
                     not_after=time.time() + 86400)
NO_CN = ClientCert(subject="O=Example,C=DE", cn=None, sans=(("URI", "urn:device:42"),),
                   serial="9", not_after=time.time() + 86400)


def _recorder() -> types.ModuleType:
    """A plugin that tells the upstream who the gateway thinks is calling."""
    module = types.ModuleType("who")
    module.PRIORITY = 1  # type: ignore[attr-defined]

    @hookimpl
    def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
        identity = ctx.identity
        upstream_request.headers["X-Test-Identity"] = json.dumps(
            None if identity is None else
            {"id": identity.id, "consumer": identity.consumer, "source": identity.source,
             "fields": identity.fields})

    module.transform_request = transform_request  # type: ignore[attr-defined]
    return module


PLUGINS = {"mtls": pygate_mtls, "who": _recorder()}


def config(upstream: str, **settings: Any) -> dict[str, Any]:
    return {"plugins": {"mtls": settings, "who": {}},
            "routes": [{"name": "r", "path": "/", "upstream": upstream}]}


def seen_identity(upstream: Any) -> Any:
    return json.loads(upstream.requests[-1].headers["X-Test-Identity"])


def config_errors(data: dict[str, Any]) -> str:
    """The gateway refuses to start: pygate's ConfigError, rendered with every problem."""
    with pytest.raises(Exception, match="configuration error") as caught:
        asyncio.run(start_gateway(data, PLUGINS))
    return str(caught.value)


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    entry = {entry["name"]: entry for entry in json.loads(done.stdout)}["mtls"]
    assert entry["distribution"] == "pygate-mtls"
    assert entry["version"] == "0.1.0"
    assert entry["priority"] == 2600
    assert {"authenticate", "config_schema"} <= set(entry["hooks"])


@pytest.mark.parametrize(("choice", "expected"), [
    ("cn", "payments-svc"),
    ("san:email", "payments@example.com"),
    ("san:dns", "payments.internal"),
    ("san:uri", "spiffe://example.com/payments"),
])
async def test_id_is_the_chosen_name(pygate_gateway, fake_upstream, choice, expected):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, id=choice), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/x", client_cert=PAYMENTS)
    assert status == 200
    assert seen_identity(upstream) == {
        "id": expected, "consumer": None, "source": "mtls",
        "fields": {"subject": PAYMENTS.subject, "serial": "5A3F", "cn": "payments-svc"}}


@pytest.mark.parametrize(("choice", "detail"), [
    ("cn", "the client certificate has no common name (CN)"),
    ("san:email", "the client certificate has no email subject alternative name"),
    ("san:dns", "the client certificate has no DNS subject alternative name"),
])
async def test_a_certificate_without_the_chosen_name_is_401_even_when_optional(
        pygate_gateway, fake_upstream, choice, detail):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, id=choice, optional=True),
                                   plugins=PLUGINS)
    status, headers, body = await gateway.request("GET", "/x", client_cert=NO_CN)
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == detail and body["route"] == "r"
    assert upstream.requests == []
    # the URI it does have is a valid id
    gateway = await pygate_gateway(config(upstream.url, id="san:uri"), plugins=PLUGINS)
    assert (await gateway.request("GET", "/x", client_cert=NO_CN))[0] == 200
    assert seen_identity(upstream)["id"] == "urn:device:42"
    assert "cn" not in seen_identity(upstream)["fields"]


async def test_consumer_is_the_one_named_for_the_subject(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(
        upstream.url, consumers={"payments": "cn=Payments-Svc, ou=billing, o=EXAMPLE",
                                 "ledger": "CN=ledger,O=Example"}), plugins=PLUGINS)
    for cert in (PAYMENTS, PAYMENTS_RENEWED):
        assert (await gateway.request("GET", "/x", client_cert=cert))[0] == 200
        seen = seen_identity(upstream)
        assert (seen["id"], seen["consumer"]) == ("payments-svc", "payments")
    # a verified certificate that no consumer names still authenticates, without consumer
    assert (await gateway.request("GET", "/x", client_cert=REPORTS))[0] == 200
    assert seen_identity(upstream)["consumer"] is None
    assert seen_identity(upstream)["id"] == "reports"


async def test_a_request_without_certificate_is_401(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    status, headers, body = await gateway.request("GET", "/x")
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == "a client certificate is required"
    assert upstream.requests == []
    # the certificate belongs to its connection: the next plain request has none
    assert (await gateway.request("GET", "/x", client_cert=PAYMENTS))[0] == 200
    assert (await gateway.request("GET", "/x"))[0] == 401


async def test_optional_passes_without_certificate(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, optional=True), plugins=PLUGINS)
    assert (await gateway.request("GET", "/x"))[0] == 200
    assert seen_identity(upstream) is None
    assert (await gateway.request("GET", "/x", client_cert=REPORTS))[0] == 200
    assert seen_identity(upstream)["id"] == "reports"


async def test_per_route_settings(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"mtls": {}, "who": {}},
         "routes": [{"name": "open", "path": "/open", "upstream": upstream.url,
                     "plugins": {"mtls": False}},
                    {"name": "soft", "path": "/soft", "upstream": upstream.url,
                     "plugins": {"mtls": {"optional": True, "id": "san:dns"}}},
                    {"name": "closed", "path": "/closed", "upstream": upstream.url}]},
        plugins=PLUGINS)
    assert (await gateway.request("GET", "/open"))[0] == 200
    assert (await gateway.request("GET", "/soft"))[0] == 200
    assert (await gateway.request("GET", "/closed"))[0] == 401
    assert (await gateway.request("GET", "/soft", client_cert=PAYMENTS))[0] == 200
    assert seen_identity(upstream)["id"] == "payments.internal"


# ---------------------------------------------------------------------------
# acl, rate-limit and headers see the identity as they see any other
# ---------------------------------------------------------------------------


async def test_acl_allows_by_consumer(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"mtls": {"optional": True,
                              "consumers": {"payments": "CN=payments-svc,OU=Billing,O=Example"}},
                     "acl": {"allow": ["payments"]}},
         "routes": [{"name": "ledger", "path": "/", "upstream": upstream.url}]},
        plugins=PLUGINS)
    assert (await gateway.request("GET", "/x", client_cert=PAYMENTS))[0] == 200
    status, _, body = await gateway.request("GET", "/x", client_cert=REPORTS)
    assert status == 403 and body["detail"] == "this caller is not on the route's access list"
    status, _, body = await gateway.request("GET", "/x")
    assert status == 403
    assert len(upstream.requests) == 1


async def test_rate_limit_counts_per_consumer(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"mtls": {"consumers": {"payments": "CN=payments-svc,OU=Billing,O=Example"}},
                     "rate-limit": {"limit": 2, "window": "1m", "key": "consumer"}},
         "routes": [{"name": "ledger", "path": "/", "upstream": upstream.url}]},
        plugins=PLUGINS)
    # two certificates of one consumer share its counter
    assert (await gateway.request("GET", "/x", client_cert=PAYMENTS))[0] == 200
    assert (await gateway.request("GET", "/x", client_cert=PAYMENTS_RENEWED))[0] == 200
    status, headers, _ = await gateway.request("GET", "/x", client_cert=PAYMENTS)
    assert status == 429 and "Retry-After" in headers
    # another caller (unmapped: counted by its id) has a counter of its own
    status, headers, _ = await gateway.request("GET", "/x", client_cert=REPORTS)
    assert status == 200 and headers["RateLimit-Remaining"] == "1"


async def test_headers_send_the_identity_upstream(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"mtls": {"id": "san:uri",
                              "consumers": {"payments": "CN=payments-svc,OU=Billing,O=Example"}},
                     "headers": {"identity": {"X-User-Id": "id", "X-Consumer": "consumer",
                                              "X-Client-Subject": "subject",
                                              "X-Client-Serial": "serial"}}},
         "routes": [{"name": "ledger", "path": "/", "upstream": upstream.url}]},
        plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/x", client_cert=PAYMENTS,
                                         headers={"X-User-Id": "forged", "X-Consumer": "admin"})
    assert status == 200
    sent = upstream.requests[-1].headers
    assert sent.getall("X-User-Id") == ["spiffe://example.com/payments"]
    assert sent.getall("X-Consumer") == ["payments"]
    assert sent["X-Client-Subject"] == "CN=payments-svc,OU=Billing,O=Example"
    assert sent["X-Client-Serial"] == "5A3F"


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def test_config_errors_name_their_key_path() -> None:
    text = config_errors(config("http://127.0.0.1:9", id="subject", optionl=True))
    assert "plugins.mtls.id:" in text and "'san:uri'" in text
    assert "plugins.mtls.optionl: unknown key; did you mean 'optional'?" in text

    text = config_errors(config("http://127.0.0.1:9",
                                consumers={"payments": "payments-svc", "empty": ""}))
    assert "plugins.mtls.consumers.payments: expected TYPE=value pairs" in text
    assert "plugins.mtls.consumers.empty: expected a distinguished name" in text

    text = config_errors(config("http://127.0.0.1:9", consumers={
        "a": "CN=svc,O=Example", "b": "cn=SVC, o=example"}))
    assert "plugins.mtls: consumers: the same subject is given to 'a' and 'b'" in text
