"""Single flight: concurrent misses for one key make one upstream call."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Callable
from typing import Any

import aiohttp
import pygate_cache
import pytest
from aiohttp import web

from pygate.plugin import hookimpl


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    return str(request.getfixturevalue("redis_server").url)


class Gate:
    """An upstream whose answers wait until the test opens the gate."""

    def __init__(self, reply: Callable[[web.Request, int], web.Response]) -> None:
        self.opened = asyncio.Event()
        self.reply = reply
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        number = self.calls
        await self.opened.wait()
        return self.reply(request, number)


def numbered(request: web.Request, number: int) -> web.Response:
    return web.Response(text=f"answer #{number}")


async def start(pygate_gateway: Any, url: str, settings: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> Any:
    plugins: dict[str, Any] = {"cache": pygate_cache, **(extra or {})}
    return await pygate_gateway(
        {"plugins": {name: (settings or {}) if name == "cache" else {} for name in plugins},
         "routes": [{"name": "r", "path": "/", "upstream": url}]},
        plugins=plugins)


async def in_flight(gateway: Any, count: int) -> None:
    """Wait until the gateway is handling ``count`` requests at once."""
    pipeline = gateway.running.pipeline
    deadline = time.monotonic() + 10
    while pipeline.in_flight < count:
        assert time.monotonic() < deadline, f"only {pipeline.in_flight} requests in flight"
        await asyncio.sleep(0.005)


Result = tuple[int, str | None, str]


async def concurrently(gateway: Any, requests: list[dict[str, Any]], gate: Gate
                       ) -> list[Result]:
    """Send every request at once; open the gate when all are inside the gateway."""
    connector = aiohttp.TCPConnector(limit=len(requests))
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(options: dict[str, Any]) -> Result:
            method = options.pop("method", "GET")
            async with session.request(method, gateway.url + "/item", **options) as response:
                return response.status, response.headers.get("X-Cache"), await response.text()

        tasks = [asyncio.create_task(one(dict(options))) for options in requests]
        await in_flight(gateway, len(requests))
        gate.opened.set()
        return await asyncio.gather(*tasks)


async def staged(gateway: Any, gate: Gate, leader: dict[str, Any],
                 waiters: list[dict[str, Any]]) -> list[Result]:
    """The leader first (until it reaches the upstream), then the waiters, then the gate."""
    connector = aiohttp.TCPConnector(limit=10)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(options: dict[str, Any]) -> Result:
            method = options.pop("method", "GET")
            async with session.request(method, gateway.url + "/item", **options) as response:
                return response.status, response.headers.get("X-Cache"), await response.text()

        first = asyncio.create_task(one(dict(leader)))
        deadline = time.monotonic() + 10
        while gate.calls < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(one(dict(options))) for options in waiters]
        await in_flight(gateway, 1 + len(waiters))
        gate.opened.set()
        return [await first, *[await task for task in rest]]


async def test_fifty_concurrent_misses_make_one_upstream_call(pygate_gateway, fake_upstream,
                                                              backend):
    gate = Gate(numbered)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url, {"backend": backend})
    results = await concurrently(gateway, [{} for _ in range(50)], gate)
    assert gate.calls == 1
    assert {(status, body) for status, _, body in results} == {(200, "answer #1")}
    assert sorted(cache for _, cache, _ in results) == ["HIT"] * 49 + ["MISS"]
    assert (await gateway.request("GET", "/item"))[1]["X-Cache"] == "HIT"
    assert gate.calls == 1


async def test_waiters_go_upstream_themselves_when_the_leader_fails(pygate_gateway,
                                                                   fake_upstream):
    def first_fails(request: web.Request, number: int) -> web.Response:
        return web.Response(status=500 if number == 1 else 200, text=f"answer #{number}")

    gate = Gate(first_fails)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url)
    results = await concurrently(gateway, [{} for _ in range(10)], gate)
    assert gate.calls == 10
    assert sorted(status for status, _, _ in results) == [200] * 9 + [500]
    assert {cache for _, cache, _ in results} == {"MISS"}
    status, headers, _ = await gateway.request("GET", "/item")
    assert (status, headers["X-Cache"]) == (200, "HIT")  # one of the waiters stored its answer
    assert gate.calls == 10


async def test_waiters_go_upstream_themselves_when_the_answer_is_private(pygate_gateway,
                                                                        fake_upstream):
    def private(request: web.Request, number: int) -> web.Response:
        return web.Response(text=f"answer #{number}", headers={"Cache-Control": "private"})

    gate = Gate(private)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url)
    results = await concurrently(gateway, [{} for _ in range(10)], gate)
    assert gate.calls == 10
    assert sorted(body for _, _, body in results) == sorted(f"answer #{n}" for n in range(1, 11))


async def test_a_waiter_of_another_variant_is_not_served_the_leaders_answer(pygate_gateway,
                                                                           fake_upstream):
    def by_language(request: web.Request, number: int) -> web.Response:
        language = request.headers.get("Accept-Language", "-")
        return web.Response(text=f"{language} #{number}", headers={"Vary": "Accept-Language"})

    gate = Gate(by_language)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url)
    results = await staged(gateway, gate, {"headers": {"Accept-Language": "fr"}},
                           [{"headers": {"Accept-Language": "fr"}},
                            {"headers": {"Accept-Language": "de"}}])
    assert results == [(200, "MISS", "fr #1"), (200, "HIT", "fr #1"), (200, "MISS", "de #2")]
    assert gate.calls == 2


async def test_head_waits_for_a_get_in_flight(pygate_gateway, fake_upstream):
    gate = Gate(numbered)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url)
    results = await staged(gateway, gate, {}, [{"method": "HEAD"}])
    assert results == [(200, "MISS", "answer #1"), (200, "HIT", "")]
    assert gate.calls == 1


def failing_post_response() -> types.ModuleType:
    """A plugin whose post_response (run before the cache's) fails once."""
    module = types.ModuleType("fails_once")
    failed: list[bool] = []

    @hookimpl
    def post_response(ctx: Any) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("boom")

    module.post_response = post_response  # type: ignore[attr-defined]
    module.PRIORITY = 10  # type: ignore[attr-defined]
    return module


async def test_waiters_are_released_when_the_leader_never_reaches_post_response(
        pygate_gateway, fake_upstream):
    gate = Gate(numbered)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url, extra={"boom": failing_post_response()})
    started = time.monotonic()
    results = await concurrently(gateway, [{} for _ in range(5)], gate)
    assert time.monotonic() - started < 5  # not the 30 s gateway timeout
    assert sorted(status for status, _, _ in results) == [200] * 4 + [500]
    assert gate.calls == 5



async def test_conditional_and_range_requests_wait_for_a_flight(pygate_gateway, fake_upstream):
    def tagged(request: web.Request, number: int) -> web.Response:
        return web.Response(text=f"answer #{number}", headers={"ETag": f'"{number}"'})

    gate = Gate(tagged)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url)
    results = await staged(gateway, gate, {}, [{"headers": {"If-None-Match": '"1"'}},
                                               {"headers": {"Range": "bytes=0-1"}}])
    assert results == [(200, "MISS", "answer #1"), (304, "HIT", ""), (200, "HIT", "answer #1")]
    assert gate.calls == 1


async def test_a_conditional_request_does_not_lead_a_flight(pygate_gateway, fake_upstream):
    gate = Gate(numbered)
    upstream = await fake_upstream(handler=gate.handle)
    gateway = await start(pygate_gateway, upstream.url)
    # the conditional request goes upstream alone; the GET after it leads its own flight
    results = await staged(gateway, gate, {"headers": {"If-None-Match": '"0"'}}, [{}])
    assert results == [(200, "MISS", "answer #1"), (200, "MISS", "answer #2")]
    assert gate.calls == 2
