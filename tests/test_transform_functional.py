"""The ``transform`` plugin end to end: a real ``pygate serve`` process, real upstreams.

Each edit both ways, placeholders (identity from ``key-auth``, a header, a query
parameter, a path parameter), bodies left untouched (not JSON, over ``max_body``,
invalid JSON, compressed), the ``cache`` storing what the client receives, clients
that cannot cause a 500, and configuration errors from ``pygate check`` with their
key paths.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import GatewayFactory, GatewayProcess, UpstreamFactory

WAIT = 10.0


class Recorder:
    """An upstream handler: records each request's headers and raw body, answers ``answer``."""

    def __init__(self, answer: bytes | Callable[[web.Request], web.StreamResponse],
                 content_type: str = "application/json", **headers: str) -> None:
        self.answer = answer
        self.content_type = content_type
        self.headers = headers
        self.bodies: list[bytes] = []
        self.heads: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.heads.append(dict(request.headers))
        if callable(self.answer):
            return self.answer(request)
        return web.Response(body=self.answer, headers={"Content-Type": self.content_type,
                                                       **self.headers})

    def last_json(self) -> Any:
        return json.loads(self.bodies[-1])


def doc(value: Any) -> bytes:
    return json.dumps(value).encode()


async def start(gateway_process: GatewayFactory, routes: str, plugins: str = "") -> Any:
    return await gateway_process(f'[gateway]\ntimeout = "10s"\n{plugins}\n{routes}')


def route(name: str, upstream: str, transform: str, path: str | None = None) -> str:
    return (f'[[routes]]\nname = "{name}"\npath = "{path or "/" + name}"\n'
            f'upstream = "{upstream}"\nplugins = {{ transform = {transform} }}\n')


async def call(gw: GatewayProcess, method: str, path: str, **kwargs: Any
               ) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            method, gw.url + path, timeout=aiohttp.ClientTimeout(total=WAIT),
            **kwargs) as response:
        return response.status, response.headers, await response.read()


def logged(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event", "").startswith(event)]


async def until_logged(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    for _ in range(int(WAIT / 0.02)):
        found = logged(gw, event)
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {event!r} in the log:\n{gw.stderr()}")


# ---------------------------------------------------------------------------
# The four edits, both ways


async def test_each_edit_both_ways(gateway_process: GatewayFactory,
                                   upstream: UpstreamFactory) -> None:
    answer = doc({"id": 1, "user_name": "al", "internal": True,
                  "owner": {"ssn": "123", "name": "A"},
                  "items": [{"sku": "a", "cost": 3}, {"sku": "b", "cost": 4}]})
    recorder = Recorder(answer, ETag='"v7"')
    up = await upstream(handler=recorder.handle)
    gw = await start(gateway_process, "".join([
        route("set", up.url, '{ request = { set = { "meta.source" = "gateway", "n" = 2 } }, '
              'response = { set = { "owner.verified" = true, "id" = "x" } } }'),
        route("remove", up.url, '{ request = { remove = ["password", "card.number"] }, '
              'response = { remove = ["internal", "owner.ssn", "items.cost"] } }'),
        route("rename", up.url, '{ request = { rename = { "userName" = "user_name", '
              '"card.no" = "number" } }, response = { rename = { "user_name" = "userName", '
              '"items.sku" = "items.code" } } }'),
        route("keep", up.url, '{ request = { keep = ["userName", "card.brand"] }, '
              'response = { keep = ["id", "owner.name", "items.sku"] } }'),
    ]))
    sent = {"userName": "al", "password": "pw", "n": 1,
            "card": {"number": "4111", "no": "9", "brand": "visa"}}
    expected = {
        "set": ({**sent, "n": 2, "meta": {"source": "gateway"}},
                {"id": "x", "user_name": "al", "internal": True,
                 "owner": {"ssn": "123", "name": "A", "verified": True},
                 "items": [{"sku": "a", "cost": 3}, {"sku": "b", "cost": 4}]}),
        "remove": ({"userName": "al", "n": 1, "card": {"no": "9", "brand": "visa"}},
                   {"id": 1, "user_name": "al", "owner": {"name": "A"},
                    "items": [{"sku": "a"}, {"sku": "b"}]}),
        "rename": ({"user_name": "al", "password": "pw", "n": 1,
                    "card": {"number": "9", "brand": "visa"}},
                   {"id": 1, "userName": "al", "internal": True,
                    "owner": {"ssn": "123", "name": "A"},
                    "items": [{"code": "a", "cost": 3}, {"code": "b", "cost": 4}]}),
        "keep": ({"userName": "al", "card": {"brand": "visa"}},
                 {"id": 1, "owner": {"name": "A"}, "items": [{"sku": "a"}, {"sku": "b"}]}),
    }
    for name, (upstream_got, client_got) in expected.items():
        status, headers, body = await call(gw, "POST", f"/{name}", json=sent)
        assert status == 200, (name, body)
        assert recorder.last_json() == upstream_got, name
        assert list(recorder.last_json()) == list(upstream_got), name  # key order kept
        assert recorder.heads[-1]["Content-Length"] == str(len(recorder.bodies[-1]))
        assert json.loads(body) == client_got, name
        assert headers["Content-Length"] == str(len(body))
        assert headers["Content-Type"] == "application/json"
        assert headers["ETag"] == 'W/"v7"'  # the same upstream version, other bytes
        assert recorder.heads[-1]["Accept-Encoding"] == "identity"


async def test_placeholders_from_identity_header_query_and_path(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    recorder = Recorder(b'{"total": 12.30, "viewer": "forged"}', ETag='"v1"')
    up = await upstream(handler=recorder.handle)
    plugins = '[plugins.key-auth]\nconsumers = { alice = { keys = ["alice-key"], ' \
              'roles = ["buyer", "staff"] } }\n'
    gw = await start(gateway_process, route(
        "orders", up.url, '{ request = { set = { "userId" = "{identity.id}", '
        '"roles" = "{identity.roles}", "tenant" = "{header.X-Tenant}", '
        '"page" = "{query.page}", "orderId" = "{id}", "ref" = "{identity.id}/{id}" } }, '
        'response = { set = { "viewer" = "{identity.consumer}" } } }',
        path="/api/orders/{id}"), plugins)
    status, headers, body = await call(
        gw, "PUT", "/api/orders/o-1?page=3", json={"userId": "root", "qty": 2},
        headers={"X-API-Key": "alice-key", "X-Tenant": "north"})
    assert status == 200, body
    assert recorder.last_json() == {"userId": "alice", "qty": 2, "roles": ["buyer", "staff"],
                                    "tenant": "north", "page": "3", "orderId": "o-1",
                                    "ref": "alice/o-1"}
    assert body == b'{"total":12.30,"viewer":"alice"}'  # the number as the upstream wrote it
    assert "ETag" not in headers  # the body depends on who asks
    # no header, no query parameter: the client's own values under those keys go
    status, _, _ = await call(gw, "PUT", "/api/orders/o-2",
                              json={"tenant": "evil", "page": "9", "qty": 1},
                              headers={"X-API-Key": "alice-key"})
    assert status == 200
    assert recorder.last_json() == {"qty": 1, "userId": "alice", "roles": ["buyer", "staff"],
                                    "orderId": "o-2", "ref": "alice/o-2"}


# ---------------------------------------------------------------------------
# Bodies left untouched


async def test_non_json_bodies_pass_byte_for_byte(gateway_process: GatewayFactory,
                                                  upstream: UpstreamFactory) -> None:
    image = bytes(range(256)) * 64 + b'{"internal": 1}'
    recorder = Recorder(image, "image/png")
    up = await upstream(handler=recorder.handle)
    gw = await start(gateway_process, route(
        "files", up.url, '{ request = { remove = ["internal"] }, '
        'response = { remove = ["internal"] } }'))
    text = b'{"internal": 1, "note": "JSON text sent as text/plain"}'
    status, headers, body = await call(gw, "POST", "/files", data=text,
                                       headers={"Content-Type": "text/plain"})
    assert status == 200
    assert recorder.bodies[-1] == text
    assert body == image
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Length"] == str(len(image))


async def test_bodies_over_max_body_pass_untouched_and_are_logged(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    big = doc({"internal": 1, "pad": "x" * 4000})
    recorder = Recorder(big)
    up = await upstream(handler=recorder.handle)
    gw = await start(gateway_process, route(
        "big", up.url, '{ max_body = "1KB", request = { remove = ["internal"] }, '
        'response = { remove = ["internal"] } }'))
    status, headers, body = await call(gw, "POST", "/big", data=big,
                                       headers={"Content-Type": "application/json"})
    assert status == 200
    assert recorder.bodies[-1] == big
    assert body == big and headers["Content-Length"] == str(len(big))
    request_lines = await until_logged(gw, "request body over the transform max_body")
    assert request_lines[0]["plugin"] == "transform" and request_lines[0]["size"] == len(big)
    response_lines = await until_logged(gw, "response body over the transform_response limit")
    assert response_lines[0]["plugins"] == ["transform"]


async def test_invalid_json_from_the_upstream_passes_untouched(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    broken = {
        "/truncated": b'{"internal": 1, "a": ',
        "/not-utf8": b'{"internal": "\xff\xfe"}',
        "/nan": b'{"internal": NaN}',
        "/deep": b"[" * 20_000 + b"]" * 20_000,
        "/huge": b'{"internal": ' + b"9" * 6000 + b"}",
    }

    def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=broken[request.path], content_type="application/json")

    up = await upstream(handler=Recorder(answer).handle)
    gw = await start(gateway_process, route(
        "api", up.url, '{ response = { remove = ["internal"] } }'))
    for path, raw in broken.items():
        status, headers, body = await call(gw, "GET", "/api" + path)
        assert (status, body) == (200, raw), path
        assert headers["Content-Length"] == str(len(raw))
    lines = await until_logged(gw, "response body is not JSON")
    assert lines[0]["plugin"] == "transform"


async def test_a_compressed_answer_is_not_edited(gateway_process: GatewayFactory,
                                                 upstream: UpstreamFactory) -> None:
    packed = gzip.compress(doc({"internal": 1, "a": 2}))
    recorder = Recorder(packed, **{"Content-Encoding": "gzip"})  # ignores Accept-Encoding
    up = await upstream(handler=recorder.handle)
    gw = await start(gateway_process, route("api", up.url,
                                            '{ response = { remove = ["internal"] } }'))
    status, headers, body = await call(gw, "GET", "/api/x",
                                       headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert recorder.heads[-1]["Accept-Encoding"] == "identity"  # the plain body was asked for
    assert body == packed and headers["Content-Encoding"] == "gzip"
    lines = await until_logged(gw, "compressed JSON response passed untouched")
    assert lines[0]["content_encoding"] == "gzip"


# ---------------------------------------------------------------------------
# With the cache; against clients that misbehave


async def test_the_cache_stores_what_the_client_receives(gateway_process: GatewayFactory,
                                                         upstream: UpstreamFactory) -> None:
    recorder = Recorder(doc({"id": 1, "internal": "secret"}),
                        **{"Cache-Control": "max-age=60"})
    up = await upstream(handler=recorder.handle)
    gw = await start(gateway_process, route(
        "items", up.url, '{ response = { remove = ["internal"] } }'),
        '[plugins.cache]\nttl = "60s"\n')
    first = await call(gw, "GET", "/items/1")
    second = await call(gw, "GET", "/items/1")
    assert (first[1]["X-Cache"], second[1]["X-Cache"]) == ("MISS", "HIT")
    for status, headers, body in (first, second):
        assert (status, json.loads(body)) == (200, {"id": 1})
        assert headers["Content-Length"] == str(len(body))
    assert len(recorder.bodies) == 1


async def test_a_client_cannot_cause_a_500(gateway_process: GatewayFactory,
                                           upstream: UpstreamFactory) -> None:
    recorder = Recorder(doc({"ok": True}))
    up = await upstream(handler=recorder.handle)
    gw = await start(gateway_process, route(
        "api", up.url, '{ request = { set = { "who" = "{header.X-Who}" }, '
        'remove = ["password"] } }'))
    bodies = [b"[" * 200_000, b'{"n": ' + b"1" * 10_000 + b"}", b'{"s": "\xff\xfe\xfd"}',
              b'{"a": Infinity}', b'{"password": "x"', b"\x00\x01"]
    for raw in bodies:
        status, headers, body = await call(gw, "POST", "/api", data=raw,
                                           headers={"Content-Type": "application/json"})
        assert status == 400, raw[:20]
        assert headers["Content-Type"] == "application/problem+json"
    # a header that is not UTF-8 is still a value: placeholders never fail a request
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    body = b'{"password": "x"}'
    writer.write(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"X-Who: Zo\xeb\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    answer = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert recorder.bodies == [b'{"who":"Zo\\udceb"}']  # the byte kept, as JSON can
    assert not logged(gw, "plugin raised") and not logged(gw, "unhandled error")
    assert "Traceback" not in gw.stderr()


# ---------------------------------------------------------------------------
# Configuration errors


async def test_config_errors_name_their_key_paths(tmp_path: Path) -> None:
    config = tmp_path / "pygate.toml"
    config.write_text(
        '[plugins.transform]\n'
        'request = { set = { "a..b" = 1, "who" = "{identty.id}" }, remove = [""] }\n'
        'response = { rename = { "owner.name" = "holder.name" }, kep = [] }\n'
        'max_body = "lots"\n'
        '[[routes]]\nname = "r"\npath = "/"\nupstream = "http://127.0.0.1:9"\n'
        'plugins = { transform = { response = { set = { "x" = "{header.}" } } } }\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pygate", "check", "-c", str(config), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 60)
    text = (out + err).decode()
    assert done.returncode == 1, text
    for expected in (
        'plugins.transform.request.set."a..b": expected a dotted path',
        "plugins.transform.request.set.who: unknown placeholder {identty.id}",
        "did you mean 'identity'?",
        "plugins.transform.request.remove[0]: expected a dotted path",
        'plugins.transform.response.rename: rename "owner.name" = "holder.name"',
        "plugins.transform.response.kep: unknown key; did you mean 'keep'?",
        "plugins.transform.max_body: expected a size",
        "routes[0].plugins.transform.response.set.x: expected {header.NAME}",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert "Traceback" not in text
