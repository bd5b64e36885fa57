"""transform through an in-process gateway (pygate.testing) against fake upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pygate_transform
from aiohttp import web

from pygate.plugin import Identity, hookimpl

pytest_plugins = ["pygate.testing"]


def _test_auth() -> types.ModuleType:
    """Trusts ``X-Test-User`` / ``X-Test-Roles`` / ``X-Test-Tenant``: tests only."""
    module = types.ModuleType("test-auth")
    module.PRIORITY = 2000  # type: ignore[attr-defined]

    @hookimpl
    def authenticate(request: web.BaseRequest) -> Identity | None:
        user = request.headers.get("X-Test-User")
        if user is None:
            return None
        roles = tuple(r for r in request.headers.get("X-Test-Roles", "").split(",") if r)
        fields: dict[str, Any] = {"org": {"id": 7, "name": "acme"}}
        if "X-Test-Tenant" in request.headers:
            fields["tenant"] = request.headers["X-Test-Tenant"]
        return Identity(id=user, roles=roles, source="test-auth", fields=fields)

    module.authenticate = authenticate  # type: ignore[attr-defined]
    return module


PLUGINS = {"transform": pygate_transform, "test-auth": _test_auth()}


def config(upstream: str, transform: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {"plugins": {"transform": transform, "test-auth": {}},
            "routes": [{"name": "r", "path": "/", "upstream": upstream, **route}]}


def answering(body: Any, content_type: str = "application/json",
              **headers: str) -> Any:
    """An upstream handler answering ``body`` (JSON unless bytes) whatever it is asked."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=raw, headers={"Content-Type": content_type, **headers})

    return handler


def sent_json(upstream: Any) -> Any:
    return json.loads(upstream.requests[-1].body)


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    entry = {e["name"]: e for e in json.loads(done.stdout)}["transform"]
    assert entry["distribution"] == "pygate-transform"
    assert entry["version"] == pygate_transform.__version__
    assert entry["priority"] == 801
    assert set(entry["hooks"]) == {"config_schema", "transform_request", "transform_response"}


async def test_request_and_response_both_ways(pygate_gateway, fake_upstream):
    upstream = await fake_upstream(handler=answering(
        {"user_name": "al", "internal": True, "owner": {"ssn": "1", "name": "A"}}))
    gateway = await pygate_gateway(config(upstream.url, {
        "request": {"set": {"meta.source": "gateway"}, "remove": ["password"],
                    "rename": {"userName": "user_name"}},
        "response": {"remove": ["internal", "owner.ssn"], "rename": {"user_name": "userName"}},
    }), plugins=PLUGINS)
    status, headers, body = await gateway.request(
        "POST", "/users", json={"userName": "al", "password": "x"})
    assert status == 200
    assert sent_json(upstream) == {"user_name": "al", "meta": {"source": "gateway"}}
    assert upstream.requests[-1].headers["Content-Length"] == str(len(upstream.requests[-1].body))
    assert body == {"userName": "al", "owner": {"name": "A"}}
    assert headers["Content-Length"] == str(len(json.dumps(body, separators=(",", ":"))))
    assert headers["Content-Type"] == "application/json"
    assert upstream.requests[-1].headers["Accept-Encoding"] == "identity"


async def test_placeholders_fill_set_and_a_missing_one_removes_the_key(pygate_gateway,
                                                                       fake_upstream):
    upstream = await fake_upstream(handler=answering({"ok": True}))
    gateway = await pygate_gateway(config(upstream.url, {
        "request": {"set": {"userId": "{identity.id}", "roles": "{identity.roles}",
                            "org": "{identity.org}", "tenant": "{header.X-Tenant}",
                            "page": "{query.page}", "orderId": "{id}",
                            "label": "order-{id}/{query.page}",
                            "by": {"user": "{identity.id}", "literal": "{{id}}"}}},
        "response": {"set": {"viewer": "{identity.id}"}},
    }, path="/orders/{id}"), plugins=PLUGINS)
    status, _, body = await gateway.request(
        "POST", "/orders/o-9?page=2%263", headers={"X-Test-User": "alice",
                                                 "X-Test-Roles": "staff,ops",
                                                 "X-Tenant": "t1"},
        json={"userId": "root", "other": 1})
    assert status == 200
    assert sent_json(upstream) == {
        "userId": "alice", "other": 1, "roles": ["staff", "ops"],
        "org": {"id": 7, "name": "acme"}, "tenant": "t1", "page": "2&3", "orderId": "o-9",
        "label": "order-o-9/2&3", "by": {"user": "alice", "literal": "{id}"}}
    assert body == {"ok": True, "viewer": "alice"}
    # anonymous, no header, no query: those keys go, whatever the client sent under them
    status, _, body = await gateway.request(
        "POST", "/orders/o-9", json={"userId": "root", "tenant": "evil", "other": 1})
    assert status == 200
    assert sent_json(upstream) == {"other": 1, "orderId": "o-9"}
    assert body == {"ok": True}


async def test_an_identity_field_is_copied_not_shared(pygate_gateway, fake_upstream):
    upstream = await fake_upstream(handler=answering({}))
    gateway = await pygate_gateway(config(upstream.url, {
        "request": {"set": {"org": "{identity.org}", "org.extra": "x"}}}), plugins=PLUGINS)
    for _ in range(2):
        await gateway.request("POST", "/", headers={"X-Test-User": "a"}, json={})
        assert sent_json(upstream) == {"org": {"id": 7, "name": "acme", "extra": "x"}}


async def test_route_tables_merge_over_the_global_one(pygate_gateway, fake_upstream):
    upstream = await fake_upstream(handler=answering({"a": 1, "b": 2, "c": 3}))
    gateway = await pygate_gateway(config(
        upstream.url, {"response": {"remove": ["a"], "rename": {"c": "see"}}},
        plugins={"transform": {"response": {"remove": ["b"]}}}), plugins=PLUGINS)
    _, _, body = await gateway.request("GET", "/")
    assert body == {"a": 1, "see": 3}


async def test_non_json_and_empty_bodies_pass_untouched(pygate_gateway, fake_upstream):
    raw = b'{"password": "x"} \xff\xfe not utf-8'
    upstream = await fake_upstream(handler=answering(raw, "text/plain"))
    gateway = await pygate_gateway(config(upstream.url, {
        "request": {"remove": ["password"]}, "response": {"remove": ["password"]}}),
        plugins=PLUGINS)
    status, _, body = await gateway.request("POST", "/", data=raw,
                                            headers={"Content-Type": "text/plain"})
    assert (status, body) == (200, raw)
    assert upstream.requests[-1].body == raw
    status, _, _ = await gateway.request("POST", "/", headers={"Content-Type":
                                                               "application/json"})
    assert status == 200 and upstream.requests[-1].body == b""


async def test_a_body_the_edits_do_not_touch_goes_on_byte_for_byte(pygate_gateway,
                                                                   fake_upstream):
    raw = b'{ "id" : 1,\n  "price": 1.50 }'
    upstream = await fake_upstream(handler=answering(raw, ETag='"v1"'))
    gateway = await pygate_gateway(config(upstream.url, {
        "request": {"remove": ["password"]}, "response": {"remove": ["internal"]}}),
        plugins=PLUGINS)
    status, headers, body = await gateway.request(
        "POST", "/", data=raw, headers={"Content-Type": "application/json"})
    assert status == 200 and body == json.loads(raw)
    assert headers["Content-Length"] == str(len(raw))
    assert upstream.requests[-1].body == raw
    async with gateway.session.get(gateway.url + "/") as response:
        assert await response.read() == raw
        assert response.headers["ETag"] == '"v1"'


async def test_a_request_that_is_not_json_gets_400_and_goes_nowhere(pygate_gateway,
                                                                   fake_upstream):
    upstream = await fake_upstream(handler=answering({}))
    gateway = await pygate_gateway(config(upstream.url, {"request": {"remove": ["x"]}}),
                                   plugins=PLUGINS)
    for raw in (b'{"x": ', b"\xff{}", b"[" * 50_000 + b"]" * 50_000, b"9" * 5000,
                b'{"a": NaN}'):
        status, headers, body = await gateway.request(
            "POST", "/", data=raw, headers={"Content-Type": "application/json"})
        assert status == 400, raw[:20]
        assert headers["Content-Type"] == "application/problem+json"
        assert "not JSON this gateway can transform" in body["detail"]
    assert upstream.requests == []


async def test_over_max_body_passes_untouched_both_ways(pygate_gateway, fake_upstream):
    big = {"internal": 1, "pad": "x" * 3000}
    upstream = await fake_upstream(handler=answering(big))
    gateway = await pygate_gateway(config(upstream.url, {
        "max_body": "1KB", "request": {"remove": ["internal"]},
        "response": {"remove": ["internal"]}}), plugins=PLUGINS)
    raw = json.dumps(big).encode()
    status, _, body = await gateway.request(
        "POST", "/", data=raw, headers={"Content-Type": "application/json"})
    assert status == 200 and body == big
    assert upstream.requests[-1].body == raw

    async def chunks() -> Any:  # no Content-Length: read, found too large, sent as it came
        yield raw[:100]
        yield raw[100:]

    status, _, body = await gateway.request(
        "POST", "/", data=chunks(), headers={"Content-Type": "application/json"})
    assert status == 200 and upstream.requests[-1].body == raw


async def test_large_bodies_within_the_limit_are_edited(pygate_gateway, fake_upstream):
    items = [{"id": i, "secret": "s" * 50} for i in range(6000)]  # ~400KB: a worker thread
    upstream = await fake_upstream(handler=answering(items))
    gateway = await pygate_gateway(config(upstream.url, {
        "max_body": "2MB", "request": {"remove": ["secret"]},
        "response": {"remove": ["secret"]}}), plugins=PLUGINS)
    status, headers, body = await gateway.request("POST", "/", json=items)
    assert status == 200
    assert body == [{"id": i} for i in range(6000)]
    assert headers["Content-Length"] == str(len(json.dumps(body, separators=(",", ":"))))
    assert sent_json(upstream) == [{"id": i} for i in range(6000)]


async def test_a_body_the_client_sends_after_100_continue_is_edited(pygate_gateway,
                                                                    fake_upstream):
    upstream = await fake_upstream(handler=answering({}))
    gateway = await pygate_gateway(config(upstream.url, {"request": {"remove": ["x"]}}),
                                   plugins=PLUGINS)
    async with gateway.session.post(gateway.url + "/", json={"x": 1, "y": 2},
                                    expect100=True) as response:
        assert response.status == 200
    assert sent_json(upstream) == {"y": 2}


async def test_validators_and_charset_after_an_edit(pygate_gateway, fake_upstream):
    routes = {
        "/strong": answering({"a": 1, "b": 2}, ETag='"v1"'),
        "/varies": answering({"a": 1}, ETag='"v1"'),
        "/utf16": answering('{"a": 1, "name": "Zoë"}'.encode("utf-16"),
                            "application/json; charset=utf-16"),
    }
    upstream = await fake_upstream(routes=routes)
    gateway = await pygate_gateway({
        "plugins": {"test-auth": {}},
        "routes": [
            {"name": "strong", "path": "/strong", "upstream": upstream.url,
             "strip_path": False, "plugins": {"transform": {"response": {"remove": ["b"]}}}},
            {"name": "varies", "path": "/varies", "upstream": upstream.url,
             "strip_path": False,
             "plugins": {"transform": {"response": {"set": {"who": "{identity.id}"}}}}},
            {"name": "utf16", "path": "/utf16", "upstream": upstream.url, "strip_path": False,
             "plugins": {"transform": {"response": {"remove": ["a"]}}}},
        ]}, plugins=PLUGINS)
    _, headers, body = await gateway.request("GET", "/strong")
    assert body == {"a": 1} and headers["ETag"] == 'W/"v1"'
    _, headers, body = await gateway.request("GET", "/varies", headers={"X-Test-User": "u"})
    assert body == {"a": 1, "who": "u"} and "ETag" not in headers
    status, headers, body = await gateway.request("GET", "/utf16")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == {"name": "Zoë"}


async def test_aggregate_calls_keep_their_bodies_and_the_composed_answer_is_edited(
        pygate_gateway, fake_upstream):
    upstream = await fake_upstream(routes={"GET /users/{id}": _user,
                                           "POST /audit": _audit})
    gateway = await pygate_gateway({
        "upstreams": {"users": {"targets": [upstream.url]}},
        "plugins": {"transform": {"request": {"set": {"forged": True}},
                                  "response": {"remove": ["user.secret"]}}},
        "routes": [{"name": "agg", "path": "/agg/{id}", "methods": ["POST"], "aggregate": {
            "calls": {"user": {"upstream": "users", "path": "/users/{id}"},
                      "audit": {"upstream": "users", "path": "/audit", "method": "POST",
                                "body": {"user": "{id}"}}}}}]}, plugins=PLUGINS)
    status, _, body = await gateway.request("POST", "/agg/4", json={"client": 1})
    assert status == 200
    assert body == {"user": {"id": "4"}, "audit": {"got": {"user": "4"}}}


async def _user(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "secret": "s"})


async def _audit(request: web.Request) -> web.Response:
    return web.json_response({"got": await request.json()})
