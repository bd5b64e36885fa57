"""cors through an in-process gateway (pygate.testing) against fake upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pygate_cors
import pytest
from aiohttp import web

from pygate.plugin import Identity, Unauthorized, hookimpl
from pygate.testing import free_port, start_gateway

pytest_plugins = ["pygate.testing"]

PLUGINS = {"cors": pygate_cors}
APP = "https://app.example.com"
CORS = {"origins": [APP, "https://*.example.org"], "methods": ["GET", "POST"],
        "headers": ["Authorization", "Content-Type"], "expose": ["X-Request-ID", "X-Total"],
        "max_age": "10m", "credentials": True}


def gateway_config(upstream: str, cors: dict[str, Any] | None = None,
                   **route: Any) -> dict[str, Any]:
    return {"plugins": {"cors": CORS if cors is None else cors},
            "routes": [{"name": "r", "path": "/api", "upstream": upstream, **route}]}


def preflight_headers(origin: str = APP, method: str = "POST",
                      headers: str | None = "content-type, authorization") -> dict[str, str]:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        out["Access-Control-Request-Headers"] = headers
    return out


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    entry = listed["cors"]
    assert entry["distribution"] == "pygate-cors"
    assert entry["version"] == "0.1.0"
    assert entry["priority"] == 2000
    assert {"pre_route", "post_response", "config_schema"} <= set(entry["hooks"])


@pytest.mark.parametrize("methods", [None, ["GET", "POST"]])
async def test_preflight_is_answered_without_the_upstream(pygate_gateway, fake_upstream,
                                                          methods):
    upstream = await fake_upstream()
    route = {"methods": methods} if methods else {}
    gateway = await pygate_gateway(gateway_config(upstream.url, **route), plugins=PLUGINS)
    status, headers, body = await gateway.request("OPTIONS", "/api/items",
                                                  headers=preflight_headers())
    assert status == 204
    assert body == b""
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert headers["Access-Control-Max-Age"] == "600"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Vary"] == "Origin"
    assert "Access-Control-Expose-Headers" not in headers
    assert "X-Request-ID" in headers
    assert upstream.requests == []


@pytest.mark.parametrize(("request_headers", "detail"), [
    (preflight_headers(origin="https://evil.example.com"), "origin not allowed"),
    (preflight_headers(method="DELETE"), "method DELETE not allowed"),
    (preflight_headers(headers="Content-Type, X-Secret"), "header X-Secret not allowed"),
])
async def test_refused_preflight_is_a_403_without_allow_headers(pygate_gateway, fake_upstream,
                                                                request_headers, detail):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url, methods=["GET", "POST"]),
                                   plugins=PLUGINS)
    status, headers, body = await gateway.request("OPTIONS", "/api", headers=request_headers)
    assert status == 403
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == f"CORS preflight refused: {detail}"
    assert not [name for name in headers if name.lower().startswith("access-control-")]
    assert upstream.requests == []


async def test_requested_headers_are_reflected_when_none_are_configured(pygate_gateway,
                                                                        fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url, {"origins": ["*"]}),
                                   plugins=PLUGINS)
    status, headers, _ = await gateway.request(
        "OPTIONS", "/api", headers=preflight_headers(origin="https://anyone.test",
                                                     method="PATCH", headers="X-A,x-b"))
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Headers"] == "X-A, x-b"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, PUT, PATCH, POST, DELETE"
    assert "Vary" not in headers
    assert "Access-Control-Allow-Credentials" not in headers
    assert "Access-Control-Max-Age" not in headers


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://a.example.org", True),
    ("https://deep.sub.example.org", True),
    ("https://A.Example.org", True),
    ("https://a.example.org:443", True),
    ("https://example.org", False),
    ("https://evilexample.org", False),
    ("https://a.evilexample.org", False),
    ("https://example.org.evil.com", False),
    ("http://a.example.org", False),
    ("https://a.example.org:8443", False),
    ("https://a.example.org/", False),
    ("null", False),
])
async def test_wildcard_subdomain_origins(pygate_gateway, fake_upstream, origin, allowed):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    status, headers, _ = await gateway.request("OPTIONS", "/api",
                                               headers=preflight_headers(origin=origin))
    assert status == (204 if allowed else 403)
    if allowed:
        assert headers["Access-Control-Allow-Origin"] == origin
    status, headers, _ = await gateway.request("GET", "/api", headers={"Origin": origin})
    assert status == 200
    assert headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
    assert "Origin" in headers["Vary"]


async def test_actual_response_gets_allow_origin_credentials_and_expose(pygate_gateway,
                                                                        fake_upstream):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True}, headers={
            "Vary": "Accept-Encoding", "X-Total": "3",
            "Access-Control-Allow-Origin": "*",  # the upstream's own CORS is replaced
            "Access-Control-Allow-Methods": "PUT"})

    upstream = await fake_upstream(handler=handler)
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    status, headers, body = await gateway.request("POST", "/api/items", headers={"Origin": APP})
    assert (status, body) == (200, {"ok": True})
    assert headers.getall("Access-Control-Allow-Origin") == [APP]
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Expose-Headers"] == "X-Request-ID, X-Total"
    assert headers["Vary"] == "Accept-Encoding, Origin"
    assert "Access-Control-Allow-Methods" not in headers
    assert len(upstream.requests) == 1


async def test_response_without_origin_gets_only_vary(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    status, headers, _ = await gateway.request("GET", "/api")
    assert status == 200
    assert headers["Vary"] == "Origin"
    assert not [name for name in headers if name.lower().startswith("access-control-")]


async def test_plain_options_request_goes_upstream(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url), plugins=PLUGINS)
    status, headers, _ = await gateway.request("OPTIONS", "/api", headers={"Origin": APP})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == APP
    assert upstream.requests[-1].method == "OPTIONS"


async def test_error_responses_carry_cors_headers(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    closed = f"http://127.0.0.1:{free_port()}"
    gateway = await pygate_gateway(
        {"plugins": {"cors": CORS},
         "routes": [{"name": "get-only", "path": "/api", "methods": ["GET"],
                     "upstream": upstream.url},
                    {"name": "down", "path": "/down", "upstream": closed}]},
        plugins=PLUGINS)
    for method, path, expected in (("DELETE", "/api", 405), ("GET", "/down", 502),
                                   ("GET", "/nowhere", 404)):
        status, headers, body = await gateway.request(method, path, headers={"Origin": APP})
        assert status == expected
        assert body["status"] == expected
        assert headers["Access-Control-Allow-Origin"] == APP
        assert headers["Access-Control-Expose-Headers"] == "X-Request-ID, X-Total"


async def test_cors_can_be_turned_off_per_route(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        gateway_config(upstream.url, methods=["GET"], plugins={"cors": False}),
        plugins=PLUGINS)
    status, headers, _ = await gateway.request("OPTIONS", "/api", headers=preflight_headers())
    assert status == 405
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await gateway.request("GET", "/api", headers={"Origin": APP})
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers
    assert "Vary" not in headers


async def test_per_route_override_is_merged_over_the_global_table(pygate_gateway,
                                                                  fake_upstream):
    upstream = await fake_upstream()
    other = "https://partner.test"
    gateway = await pygate_gateway(
        {"plugins": {"cors": CORS},
         "routes": [{"name": "partner", "path": "/partner", "upstream": upstream.url,
                     "plugins": {"cors": {"origins": [other], "methods": ["PUT"]}}},
                    {"name": "main", "path": "/api", "upstream": upstream.url}]},
        plugins=PLUGINS)
    status, headers, _ = await gateway.request(
        "OPTIONS", "/partner", headers=preflight_headers(origin=other, method="PUT"))
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == other
    assert headers["Access-Control-Allow-Methods"] == "PUT"
    # the keys the route does not name come from the global table
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Max-Age"] == "600"
    status, _, _ = await gateway.request("OPTIONS", "/partner", headers=preflight_headers())
    assert status == 403
    _, headers, _ = await gateway.request("GET", "/partner", headers={"Origin": other})
    assert headers["Access-Control-Expose-Headers"] == "X-Request-ID, X-Total"
    # the other route keeps the global settings
    status, headers, _ = await gateway.request("OPTIONS", "/api", headers=preflight_headers())
    assert (status, headers["Access-Control-Allow-Origin"]) == (204, APP)
    assert [r.method for r in upstream.requests] == ["GET"]  # preflights never went upstream


async def config_errors(data: dict[str, Any]) -> str:
    """The gateway refuses to start: pygate's ConfigError, rendered with every problem."""
    with pytest.raises(Exception, match="configuration error") as caught:
        await start_gateway(data, PLUGINS)
    return str(caught.value)


async def test_wildcard_origin_with_credentials_is_a_config_error() -> None:
    text = await config_errors(gateway_config("http://127.0.0.1:9", {"credentials": True}))
    assert 'plugins.cors.credentials: credentials = true cannot be combined with origins = ["*"]' \
        in text
    text = await config_errors(gateway_config("http://127.0.0.1:9",
                                              {"origins": ["*", APP], "credentials": True}))
    assert "plugins.cors.credentials:" in text
    # a route that turns credentials on over a global "*"
    text = await config_errors(gateway_config("http://127.0.0.1:9", {"origins": ["*"]},
                                              plugins={"cors": {"credentials": True}}))
    assert "routes[0].plugins.cors.credentials:" in text


async def test_other_config_errors_name_their_key_path() -> None:
    text = await config_errors(gateway_config("http://127.0.0.1:9", {
        "origins": [APP, "app.example.com", "https://a.example.com/path", "https://*.com"],
        "methods": ["GET", "G T"], "max_age": "ten minutes", "expose": ["X Bad"],
        "credential": True}))
    assert "plugins.cors.origins[1]: expected an origin like" in text
    assert "plugins.cors.origins[2]:" in text
    assert "plugins.cors.origins[3]:" in text
    assert "plugins.cors.methods[1]: expected an HTTP method" in text
    assert "plugins.cors.max_age: expected a duration" in text
    assert "plugins.cors.expose[0]: expected a header name" in text
    assert "plugins.cors.credential: unknown key; did you mean 'credentials'?" in text


def _strict_auth() -> types.ModuleType:
    """Refuses every request without ``Authorization``, as an auth plugin would."""
    module = types.ModuleType("strict-auth")
    module.PRIORITY = 1250  # type: ignore[attr-defined]

    @hookimpl
    def authenticate(request: web.BaseRequest) -> Identity:
        if "Authorization" not in request.headers:
            raise Unauthorized("credentials required", headers={"WWW-Authenticate": "Key"})
        return Identity(id="someone")

    module.authenticate = authenticate  # type: ignore[attr-defined]
    return module


async def test_preflight_comes_before_authentication(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    config = gateway_config(upstream.url)
    config["plugins"]["strict-auth"] = {}
    gateway = await pygate_gateway(config, plugins={**PLUGINS, "strict-auth": _strict_auth()})
    status, headers, _ = await gateway.request("OPTIONS", "/api", headers=preflight_headers())
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == APP
    status, headers, body = await gateway.request("GET", "/api", headers={"Origin": APP})
    assert (status, body["detail"]) == (401, "credentials required")
    assert headers["Access-Control-Allow-Origin"] == APP
    assert upstream.requests == []
