"""headers through an in-process gateway (pygate.testing) against fake upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pygate_headers
import pytest
from aiohttp import web
from multidict import CIMultiDict

from pygate.plugin import Identity, hookimpl
from pygate.testing import start_gateway

pytest_plugins = ["pygate.testing"]


def _test_auth() -> types.ModuleType:
    """Trusts ``X-Test-User`` / ``X-Test-Roles`` and reads ``X-Test-Tenant``: tests only."""
    module = types.ModuleType("test-auth")
    module.PRIORITY = 2000  # type: ignore[attr-defined]

    @hookimpl
    def authenticate(request: web.BaseRequest) -> Identity | None:
        user = request.headers.get("X-Test-User")
        if user is None:
            return None
        roles = tuple(r for r in request.headers.get("X-Test-Roles", "").split(",") if r)
        fields = {"tenant": request.headers["X-Test-Tenant"]} \
            if "X-Test-Tenant" in request.headers else {}
        return Identity(id=user, roles=roles, consumer=request.headers.get("X-Test-Consumer"),
                        source="test-auth", fields=fields)

    module.authenticate = authenticate  # type: ignore[attr-defined]
    return module


PLUGINS = {"headers": pygate_headers, "test-auth": _test_auth()}


def gateway_config(upstream: str, headers: dict[str, Any] | None = None,
                   **route: Any) -> dict[str, Any]:
    return {"plugins": {"headers": headers or {}, "test-auth": {}},
            "routes": [{"name": "r", "path": "/", "upstream": upstream, **route}]}


def spoofed() -> CIMultiDict[str]:
    return CIMultiDict([("X-User-Id", "admin"), ("x-user-id", "root"),
                        ("X-User-Role", "admin"), ("X-USER-ROLE", "superuser")])


async def upstream_with_headers(fake_upstream: Any, **headers: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(text="ok")
        for name, value in headers.items():
            response.headers[name.replace("_", "-")] = value
        return response

    return await fake_upstream(handler=handler)


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    entry = listed["headers"]
    assert entry["distribution"] == "pygate-headers"
    assert entry["version"] == "0.1.0"
    assert entry["priority"] == 800
    assert {"transform_request", "post_response", "config_schema"} <= set(entry["hooks"])


async def identity_echo(fake_upstream: Any) -> Any:
    """An upstream that answers with every value it got for the identity headers."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({name: request.headers.getall(name, [])
                                  for name in ("X-User-Id", "X-User-Role")})

    return await fake_upstream(handler=handler)


async def test_spoofed_identity_headers_are_removed_for_anonymous_requests(pygate_gateway,
                                                                          fake_upstream):
    upstream = await identity_echo(fake_upstream)
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    status, _, body = await gateway.request("GET", "/", headers=spoofed())
    assert status == 200
    assert body == {"X-User-Id": [], "X-User-Role": []}


async def test_spoofed_identity_headers_are_replaced_for_authenticated_requests(
        pygate_gateway, fake_upstream):
    upstream = await identity_echo(fake_upstream)
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    request_headers = spoofed()
    request_headers.update({"X-Test-User": "u-7", "X-Test-Roles": "staff,ops"})
    status, _, body = await gateway.request("GET", "/", headers=request_headers)
    assert status == 200
    assert body == {"X-User-Id": ["u-7"], "X-User-Role": ["staff,ops"]}


async def test_identity_without_roles_sends_no_role_header(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    await gateway.request("GET", "/", headers={"X-Test-User": "u-1", "X-User-Role": "admin"})
    sent = upstream.requests[-1].headers
    assert sent["X-User-Id"] == "u-1"
    assert "X-User-Role" not in sent


async def test_custom_identity_mapping(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    mapping = {"X-Consumer": "consumer", "X-Tenant": "tenant", "X-Roles": "roles"}
    gateway = await pygate_gateway(gateway_config(upstream.url, {"identity": mapping}),
                                   plugins=PLUGINS)
    await gateway.request("GET", "/", headers={"X-Test-User": "u-1", "X-Test-Tenant": "acme",
                                               "X-Test-Roles": "a,b", "X-Tenant": "evil"})
    sent = upstream.requests[-1].headers
    assert sent["X-Consumer"] == "u-1"  # no consumer name: the id
    assert sent["X-Tenant"] == "acme"
    assert sent["X-Roles"] == "a,b"
    await gateway.request("GET", "/", headers={"X-Test-User": "u-2", "X-Tenant": "evil",
                                               "X-Test-Consumer": "shop"})
    sent = upstream.requests[-1].headers
    assert sent["X-Consumer"] == "shop"
    assert "X-Tenant" not in sent  # a field the identity lacks: the client's copy is gone


async def test_request_add_remove_rename_in_that_order(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    edits = {"remove": ["X-New", "X-Debug"], "rename": {"X-Old": "X-New"},
             "add": {"X-Old": "added", "X-Gateway": "pygate"}}
    gateway = await pygate_gateway(gateway_config(upstream.url, {"request": edits}),
                                   plugins=PLUGINS)
    await gateway.request("GET", "/", headers={"X-Old": "from-client", "X-New": "dropped",
                                               "X-Debug": "1", "X-Gateway": "spoof",
                                               "X-Kept": "yes"})
    sent = upstream.requests[-1].headers
    assert sent["X-New"] == "from-client"
    assert sent["X-Old"] == "added"
    assert sent["X-Gateway"] == "pygate"
    assert sent["X-Kept"] == "yes"
    assert "X-Debug" not in sent


async def test_response_add_remove_rename(pygate_gateway, fake_upstream):
    upstream = await upstream_with_headers(fake_upstream, X_Internal="secret", X_Old="v",
                                           X_Version="1")
    edits = {"remove": ["X-Internal"], "rename": {"X-Old": "X-New"},
             "add": {"X-Version": "2", "Strict-Transport-Security": "max-age=63072000"}}
    gateway = await pygate_gateway(gateway_config(upstream.url, {"response": edits}),
                                   plugins=PLUGINS)
    status, headers, body = await gateway.request("GET", "/")
    assert (status, body) == (200, b"ok")
    assert "X-Internal" not in headers
    assert "X-Old" not in headers
    assert headers["X-New"] == "v"
    assert headers.getall("X-Version") == ["2"]
    assert headers["Strict-Transport-Security"] == "max-age=63072000"


async def test_server_and_x_powered_by_are_removed_by_default(pygate_gateway, fake_upstream):
    upstream = await upstream_with_headers(fake_upstream, Server="Apache/2.4.1 (Unix)",
                                           X_Powered_By="PHP/5.6")
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    status, headers, _ = await gateway.request("GET", "/")
    assert status == 200
    assert "X-Powered-By" not in headers
    # not the upstream's, nor aiohttp's own version string
    assert headers.getall("Server") == ["pygate"]


async def test_route_can_keep_the_upstream_server_header(pygate_gateway, fake_upstream):
    upstream = await upstream_with_headers(fake_upstream, Server="Apache", X_Powered_By="PHP")
    gateway = await pygate_gateway(
        gateway_config(upstream.url, plugins={"headers": {"response": {"remove": []}}}),
        plugins=PLUGINS)
    _, headers, _ = await gateway.request("GET", "/")
    assert headers["Server"] == "Apache"
    assert headers["X-Powered-By"] == "PHP"


async def test_response_edits_apply_to_problem_documents(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        gateway_config(upstream.url, {"response": {"add": {"X-Gateway": "pygate"}}},
                       path="/api", methods=["GET"]),
        plugins=PLUGINS)
    status, headers, _ = await gateway.request("DELETE", "/api")
    assert status == 405
    assert headers["X-Gateway"] == "pygate"
    status, headers, _ = await gateway.request("GET", "/elsewhere")
    assert status == 404
    assert headers["X-Gateway"] == "pygate"


async def test_per_route_override_is_merged(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"headers": {"request": {"add": {"X-Gateway": "pygate", "X-Zone": "a"}}},
                     "test-auth": {}},
         "routes": [{"name": "b", "path": "/b", "upstream": upstream.url,
                     "plugins": {"headers": {"request": {"add": {"X-Zone": "b"}}}}},
                    {"name": "off", "path": "/off", "upstream": upstream.url,
                     "plugins": {"headers": False}},
                    {"name": "a", "path": "/", "upstream": upstream.url}]},
        plugins=PLUGINS)
    await gateway.request("GET", "/b")
    sent = upstream.requests[-1].headers
    assert (sent["X-Gateway"], sent["X-Zone"]) == ("pygate", "b")
    await gateway.request("GET", "/a")
    assert upstream.requests[-1].headers["X-Zone"] == "a"
    await gateway.request("GET", "/off", headers={"X-User-Id": "spoof"})
    assert upstream.requests[-1].headers["X-User-Id"] == "spoof"  # the plugin is off there


async def test_config_errors_name_their_key_path() -> None:
    async def errors(headers: dict[str, Any]) -> str:
        # the gateway refuses to start: pygate's ConfigError lists every problem
        with pytest.raises(Exception, match="configuration error") as caught:
            await start_gateway(gateway_config("http://127.0.0.1:9", headers), PLUGINS)
        return str(caught.value)

    text = await errors({"request": {"add": {"Content-Length": "1", "Bad Name": "x"},
                               "rename": {"X-A": "Transfer-Encoding"}},
                   "response": {"remvoe": ["Server"], "add": {"X-Crlf": "a\r\nb"}}})
    assert "plugins.headers.request.add.Content-Length: Content-Length is set by the gateway" \
        in text
    assert 'plugins.headers.request.add."Bad Name": expected a header name' in text
    assert "plugins.headers.request.rename.X-A: Transfer-Encoding is set by the gateway" in text
    assert "plugins.headers.response.remvoe: unknown key; did you mean 'remove'?" in text
    assert "plugins.headers.response.add.X-Crlf: a header value may not contain control" in text

    text = await errors({"request": {"add": {"x-user-id": "42"}}})
    assert "plugins.headers.request: x-user-id is an identity header" in text
    text = await errors({"identity": {"X-Who": ""}})
    assert "plugins.headers.identity.X-Who:" in text
