"""The ``transform_response`` hook in the core (PRODUCT.md section 7).

Only chains with an implementation buffer the upstream body, up to the plugin's limit
(its config's ``max_body``); every other chain keeps streaming. After the hooks the
response carries the new body's Content-Length, a weak ETag and no stale digest; a hook
that raises is a 500 naming the plugin in the log; the hooks run before
``post_response``, in reverse priority order, each within its own limit.

The gateway runs in-process (``pygate.testing``: a real server on a loopback port) with
plugin objects built here; the upstreams are loopback aiohttp servers.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Callable
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from pygate.plugin import Context, Forbidden, hookimpl

WAIT = 5.0  # upper bound for every awaited event; passing runs take milliseconds
PART = 200_000  # bytes the streaming upstream sends before it waits


def _plugin(name: str, change: Callable[[web.Response], None] | None = None, *,
            priority: int = 0, seen: list[str] | None = None) -> types.ModuleType:
    """A plugin whose ``transform_response`` calls ``change(response)`` and notes its
    name in ``seen``; its ``post_response`` notes ``post:NAME:LENGTH``."""
    module = types.ModuleType(name)
    module.PRIORITY = priority  # type: ignore[attr-defined]
    notes = seen if seen is not None else []

    @hookimpl
    def transform_response(response: web.Response) -> None:
        notes.append(name)
        if change is not None:
            change(response)

    @hookimpl
    def post_response(response: web.StreamResponse) -> None:
        body = getattr(response, "body", None)
        notes.append(f"post:{name}:{len(body) if isinstance(body, bytes) else None}")

    module.transform_response = transform_response  # type: ignore[attr-defined]
    module.post_response = post_response  # type: ignore[attr-defined]
    return module


def _post_only(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def post_response(response: web.StreamResponse) -> None:
        response.headers["X-Seen-By"] = name

    module.post_response = post_response  # type: ignore[attr-defined]
    return module


def route(upstream: str, plugins: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "r", "path": "/", "upstream": upstream, "plugins": plugins, **extra}


def streaming_handler(release: asyncio.Event, content_type: str = "application/json"):
    """An upstream that sends :data:`PART` bytes, then waits for ``release`` to send the
    rest (chunked, no Content-Length)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(b"a" * PART)
        await asyncio.wait_for(release.wait(), WAIT)
        await response.write(b"b" * PART)
        await response.write_eof()
        return response

    return handler


async def read_while_upstream_sends(gateway: Any, path: str, release: asyncio.Event
                                    ) -> tuple[dict[str, str], bytes]:
    """The first :data:`PART` bytes must arrive before the upstream is let finish."""
    async with gateway.session.get(gateway.url + path) as response:
        first = await asyncio.wait_for(response.content.readexactly(PART), WAIT)
        release.set()
        rest = await asyncio.wait_for(response.content.read(), WAIT)
        return dict(response.headers), first + rest


# ---------------------------------------------------------------------------
# Streaming stays where no plugin asks for the body


async def test_a_chain_without_the_hook_still_streams(pygate_gateway, fake_upstream):
    release = asyncio.Event()
    upstream = await fake_upstream(handler=streaming_handler(release))
    gateway = await pygate_gateway({"routes": [route(upstream.url, {"seen": {}})]},
                                   plugins={"seen": _post_only("seen")})
    headers, body = await read_while_upstream_sends(gateway, "/big", release)
    assert headers["X-Seen-By"] == "seen"
    assert body == b"a" * PART + b"b" * PART


async def test_a_body_over_the_limit_streams_untouched(pygate_gateway, fake_upstream):
    release = asyncio.Event()
    upstream = await fake_upstream(handler=streaming_handler(release))
    seen: list[str] = []

    def replace(response: web.Response) -> None:
        response.body = b"replaced"

    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, {"shrink": {"max_body": 1000}})]},
        plugins={"shrink": _plugin("shrink", replace, seen=seen)})
    with capture_logs() as logs:
        _, body = await read_while_upstream_sends(gateway, "/big", release)
    assert body == b"a" * PART + b"b" * PART
    assert "shrink" not in seen  # the hook never saw it
    assert any(e["event"].startswith("response body over the transform_response limit")
               and e["plugins"] == ["shrink"] for e in logs)


async def test_server_sent_events_stream_through_a_chain_with_the_hook(
        pygate_gateway, fake_upstream):
    release = asyncio.Event()
    upstream = await fake_upstream(handler=streaming_handler(release, "text/event-stream"))
    seen: list[str] = []
    gateway = await pygate_gateway({"routes": [route(upstream.url, {"t": {}})]},
                                   plugins={"t": _plugin("t", seen=seen)})
    _, body = await read_while_upstream_sends(gateway, "/events", release)
    assert body == b"a" * PART + b"b" * PART
    assert "t" not in seen


# ---------------------------------------------------------------------------
# What a hook changes, and what the core fixes afterwards


async def test_hook_transform_response_replaces_the_body_and_fixes_the_head(
        pygate_gateway, fake_upstream):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": 7, "internal": "x"}, headers={
            "ETag": '"v1"', "Content-MD5": "bm90IHRoZSBzYW1l", "X-Upstream": "kept"})

    upstream = await fake_upstream(handler=handler)

    def rewrite(response: web.Response) -> None:
        assert isinstance(response.body, bytes)
        data = json.loads(response.body)
        del data["internal"]
        data["note"] = "a longer body than the upstream sent, by some bytes"
        response.body = json.dumps(data).encode()
        response.set_status(201)

    gateway = await pygate_gateway({"routes": [route(upstream.url, {"t": {}})]},
                                   plugins={"t": _plugin("t", rewrite)})
    async with gateway.session.get(gateway.url + "/users/7") as response:
        raw = await response.read()
        assert response.status == 201
        assert json.loads(raw) == {"id": 7, "note": "a longer body than the upstream sent, "
                                   "by some bytes"}
        assert response.headers["Content-Length"] == str(len(raw))
        assert "Transfer-Encoding" not in response.headers
        assert response.headers["ETag"] == 'W/"v1"'  # same version, other bytes
        assert "Content-MD5" not in response.headers
        assert response.headers["X-Upstream"] == "kept"


async def test_an_unchanged_body_keeps_its_validators(pygate_gateway, fake_upstream):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"same", headers={"ETag": '"v1"', "Content-MD5": "abc"})

    upstream = await fake_upstream(handler=handler)
    gateway = await pygate_gateway({"routes": [route(upstream.url, {"t": {}})]},
                                   plugins={"t": _plugin("t")})
    status, headers, body = await gateway.request("GET", "/")
    assert (status, body) == (200, b"same")
    assert headers["ETag"] == '"v1"' and headers["Content-MD5"] == "abc"
    assert headers["Content-Length"] == "4"


async def test_hooks_run_in_reverse_priority_before_post_response_each_within_its_limit(
        pygate_gateway, fake_upstream):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 50)

    upstream = await fake_upstream(handler=handler)
    seen: list[str] = []

    def grow(response: web.Response) -> None:
        assert isinstance(response.body, bytes)
        response.body = response.body + b"y" * 100

    # "low" runs first on the response side and grows the body past "high"'s limit
    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, {"low": {}, "high": {"max_body": 120}})]},
        plugins={"low": _plugin("low", grow, priority=1, seen=seen),
                 "high": _plugin("high", grow, priority=9, seen=seen)})
    status, headers, body = await gateway.request("GET", "/")
    assert status == 200
    assert body == b"x" * 50 + b"y" * 100  # "high" was skipped: 150 bytes > 120
    assert headers["Content-Length"] == "150"
    assert seen == ["low", "post:low:150", "post:high:150"]


async def test_the_composed_body_of_an_aggregate_route_is_transformed(
        pygate_gateway, fake_upstream):
    upstream = await fake_upstream(routes={"GET /users/{id}": _user})

    def add(response: web.Response) -> None:
        assert isinstance(response.body, bytes)
        data = json.loads(response.body)
        data["seen"] = True
        response.body = json.dumps(data).encode()

    gateway = await pygate_gateway(
        {"upstreams": {"users": {"targets": [upstream.url]}},
         "routes": [{"name": "agg", "path": "/agg/{id}", "plugins": {"t": {}},
                     "aggregate": {"calls": {"user": {"upstream": "users",
                                                      "path": "/users/{id}"}}}}]},
        plugins={"t": _plugin("t", add)})
    status, headers, body = await gateway.request("GET", "/agg/3")
    assert status == 200
    assert body == {"user": {"id": "3"}, "seen": True}
    assert headers["Content-Length"] == str(len(json.dumps(body, separators=(", ", ": "))))


async def _user(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"]})


async def test_head_and_plugin_answers_are_not_transformed(pygate_gateway, fake_upstream):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"upstream body")

    upstream = await fake_upstream(handler=handler)
    seen: list[str] = []
    answer = types.ModuleType("answer")
    answer.PRIORITY = 5  # type: ignore[attr-defined]

    @hookimpl
    def admit(request: web.BaseRequest) -> web.Response | None:
        return web.Response(body=b"from a plugin") if "X-Answer" in request.headers else None

    answer.admit = admit  # type: ignore[attr-defined]

    def replace(response: web.Response) -> None:
        response.body = b"changed"

    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, {"t": {}, "answer": {}})]},
        plugins={"t": _plugin("t", replace, seen=seen), "answer": answer})
    status, headers, body = await gateway.request("HEAD", "/")
    assert (status, headers["Content-Length"]) == (200, str(len(b"upstream body")))
    status, _, body = await gateway.request("GET", "/", headers={"X-Answer": "1"})
    assert (status, body) == (200, b"from a plugin")
    assert "t" not in seen
    status, _, body = await gateway.request("GET", "/")
    assert (status, body) == (200, b"changed")


# ---------------------------------------------------------------------------
# The plugin-failure rule


async def test_a_hook_that_raises_gives_500_naming_the_plugin(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()

    def boom(response: web.Response) -> None:
        raise RuntimeError("secret internals")

    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, {"fragile": {}}, name="bad", path="/bad"),
                    route(upstream.url, {}, name="good", path="/good")]},
        plugins={"fragile": _plugin("fragile", boom)})
    with capture_logs() as logs:
        status, headers, body = await gateway.request("GET", "/bad")
    assert status == 500
    assert headers["Content-Type"] == "application/problem+json"
    assert body["route"] == "bad"
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    failed = [e for e in logs if e["event"] == "plugin raised"]
    assert [(e["plugin"], e["hook"]) for e in failed] == [("fragile", "transform_response")]
    status, _, _ = await gateway.request("GET", "/good")
    assert status == 200


async def test_a_hook_may_refuse_with_a_gateway_error(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()

    def refuse(response: web.Response) -> None:
        raise Forbidden("this answer is not for you")

    gateway = await pygate_gateway({"routes": [route(upstream.url, {"t": {}})]},
                                   plugins={"t": _plugin("t", refuse)})
    status, headers, body = await gateway.request("GET", "/")
    assert status == 403
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == "this answer is not for you"


async def test_the_hook_sees_the_context(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    found: list[tuple[str | None, Any]] = []
    module = types.ModuleType("ctx-reader")

    @hookimpl
    async def transform_response(ctx: Context, response: web.Response) -> None:
        await asyncio.sleep(0)
        found.append((ctx.route.name if ctx.route else None, ctx.config))

    module.transform_response = transform_response  # type: ignore[attr-defined]
    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, {"reader": {"max_body": 4096, "k": "v"}})]},
        plugins={"reader": module})
    status, _, _ = await gateway.request("GET", "/")
    assert status == 200
    assert found == [("r", {"max_body": 4096, "k": "v"})]
