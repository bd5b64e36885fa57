"""Upstream pools end to end: balancing, health checks, breaker, timeouts, retries.

Real aiohttp upstreams on loopback behind in-process gateways
(``pygate_gateway``), and a real ``pygate serve`` process for the health-check
scenario. Each target answers with its name, so a test sees which one served
a request the way a client would.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from pygate import Context, hookimpl, testing
from pygate.upstream.forward import TRIED
from tests.conftest import (
    GatewayFactory,
    RawUpstream,
    Upstream,
    UpstreamFactory,
    answer_not_http,
    answer_with_reset,
    free_port,
    problem,
)

Gateways = Callable[..., Any]


def pool(targets: list[Any], **options: Any) -> dict[str, Any]:
    """A config with one upstream ``pool`` behind the route ``/api``."""
    gateway = options.pop("gateway", {})
    plugins = options.pop("route_plugins", None)
    route: dict[str, Any] = {"name": "api", "path": "/api", "upstream": "pool"}
    if plugins:
        route["plugins"] = plugins
    return {"gateway": gateway, "upstreams": {"pool": {"targets": targets, **options}},
            "routes": [route]}


def named(name: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"name": name})
    return handler


async def names(gw: testing.TestGateway, count: int, method: str = "GET", **kwargs: Any
                ) -> list[str]:
    """Who served each of ``count`` sequential requests (every one must be a 200)."""
    out = []
    for _ in range(count):
        status, _, body = await gw.request(method, "/api/x", **kwargs)
        assert status == 200, body
        out.append(body["name"])
    return out


async def statuses(gw: testing.TestGateway, count: int, method: str = "GET", **kwargs: Any
                   ) -> list[int]:
    return [(await gw.request(method, "/api/x", **kwargs))[0] for _ in range(count)]


async def timed(gw: testing.TestGateway, method: str = "GET", path: str = "/api/x"
                ) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, _, body = await gw.request(method, path, headers={"X-Request-ID": "timed"})
    return status, body, time.monotonic() - started


def expect_problem(body: Any, status: int, title: str) -> dict[str, Any]:
    doc = problem(body)
    assert doc["status"] == status and doc["title"] == title, doc
    assert doc["request_id"] == "timed" and doc["route"] == "api"
    assert "127.0.0.1" not in doc["detail"]
    return doc


# ---------------------------------------------------------------------------
# Balancing
# ---------------------------------------------------------------------------


async def test_round_robin_spreads_exactly_evenly_and_by_weight(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    a, b, c = [await upstream(named(n)) for n in "abc"]
    gw = await pygate_gateway(pool([a.url, b.url, c.url]))
    served = await names(gw, 30)
    assert Counter(served) == {"a": 10, "b": 10, "c": 10}
    assert served[:6] == ["a", "b", "c", "a", "b", "c"]

    light, heavy = await upstream(named("light")), await upstream(named("heavy"))
    gw = await pygate_gateway(pool([light.url, {"url": heavy.url, "weight": 2}]))
    served = await names(gw, 30)
    assert Counter(served) == {"light": 10, "heavy": 20}
    assert served[:3].count("heavy") == 2  # interleaved, not in blocks


async def test_least_conn_prefers_the_idle_target_while_a_slow_body_streams(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()
    slow_started: asyncio.Queue[str] = asyncio.Queue()

    def target(name: str) -> Any:
        async def slow(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first chunk;")
            slow_started.put_nowait(name)
            await release.wait()
            await response.write(b"last chunk")
            return response
        return upstream(routes={"GET /slow": slow, "GET /{tail:.*}": named(name)})

    a, b = await target("a"), await target("b")
    gw = await pygate_gateway(pool([a.url, b.url], balancer="least-conn"))
    async with gw.session.get(gw.url + "/api/slow") as response:
        assert response.status == 200
        assert await response.content.readuntil(b";") == b"first chunk;"  # headers are in
        busy = await slow_started.get()
        idle = "b" if busy == "a" else "a"
        # The slow request is still in flight (its body is not finished): all to the other.
        assert await names(gw, 8) == [idle] * 8
        release.set()
        assert await response.read() == b"last chunk"
    # Finished: both idle again, ties shared.
    assert Counter(await names(gw, 8)) == {"a": 4, "b": 4}


async def test_hash_on_header_and_on_client_ip_is_sticky(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    targets = [await upstream(named(n)) for n in "abc"]
    urls = [t.url for t in targets]
    gw = await pygate_gateway(pool(urls, balancer="hash", hash_on="header:X-User"))
    owners = {}
    for user in range(24):
        served = set(await names(gw, 3, headers={"X-User": f"user-{user}"}))
        assert len(served) == 1, (user, served)
        owners[user] = served.pop()
    assert len(set(owners.values())) == 3

    gw = await pygate_gateway(pool(urls, balancer="hash", hash_on="ip",
                                   gateway={"trusted_proxies": ["127.0.0.1/32"]}))
    by_ip = {}
    for host in range(24):
        served = set(await names(gw, 3, headers={"X-Forwarded-For": f"192.0.2.{host}"}))
        assert len(served) == 1, (host, served)
        by_ip[host] = served.pop()
    assert len(set(by_ip.values())) == 3


# ---------------------------------------------------------------------------
# Active health checks, in a real `pygate serve`
# ---------------------------------------------------------------------------


class Service:
    """A loopback upstream that can be killed and started again on the same port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.hits = 0
        self.probes = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def health(request: web.Request) -> web.Response:
            self.probes += 1
            return web.Response(text="ok")

        async def serve(request: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response({"name": self.name})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_route("*", "/{tail:.*}", serve)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def services() -> AsyncIterator[Callable[[str], Any]]:
    started: list[Service] = []

    async def factory(name: str) -> Service:
        service = Service(name)
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in started:
        await service.stop()


async def logged(gw: Any, event: str, within: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Wait until the gateway process has logged ``event`` (with ``fields``)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in gw.log_events():
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return line
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {event!r} log line within {within}s:\n{gw.stderr()}")


async def test_health_checks_take_a_killed_target_out_and_bring_it_back(
        gateway_process: GatewayFactory, services: Callable[[str], Any],
        http: Any) -> None:
    a, b = await services("a"), await services("b")
    gw = await gateway_process(f"""
[upstreams.pool]
targets = ["{a.url}", "{b.url}"]
retries = 0
health = {{ path = "/health", interval = "100ms", timeout = "500ms", unhealthy = 2, healthy = 2 }}

[[routes]]
name = "api"
path = "/api"
upstream = "pool"
""")

    async def served(count: int) -> list[str]:
        out = []
        for _ in range(count):
            async with http.get(gw.url + "/api/x") as response:
                assert response.status == 200, await response.text()
                out.append((await response.json())["name"])
        return out

    assert Counter(await served(4)) == {"a": 2, "b": 2}
    await a.stop()
    down = await logged(gw, "target unhealthy", target=a.url, upstream="pool")
    assert down["failures"] == 2
    assert await served(10) == ["b"] * 10  # no request reaches the dead target, none fails

    await a.start()  # a new server on the same port
    await logged(gw, "target healthy", target=a.url, upstream="pool")
    assert a.probes >= 2
    hits = a.hits
    assert Counter(await served(6)) == {"a": 3, "b": 3}
    assert a.hits == hits + 3
    assert "Traceback" not in gw.stderr()


async def test_no_healthy_target_gets_503_at_once(
        pygate_gateway: Gateways) -> None:
    gw = await pygate_gateway(pool(
        [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"],
        health={"interval": "20ms", "timeout": "200ms", "unhealthy": 1, "healthy": 1}))
    upstream = gw.running.gateway.upstreams["pool"]
    deadline = time.monotonic() + 5
    while any(t.healthy for t in upstream.targets):
        assert time.monotonic() < deadline, "the health checks never took the targets out"
        await asyncio.sleep(0.01)
    status, body, elapsed = await timed(gw)
    assert status == 503
    doc = expect_problem(body, 503, "Service Unavailable")
    assert doc["detail"] == "no healthy target in upstream 'pool'"
    assert elapsed < 0.1


# ---------------------------------------------------------------------------
# Passive breaker
# ---------------------------------------------------------------------------


async def test_breaker_ejects_a_failing_target_and_lets_it_back_after_a_good_trial(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    failing = {"on": True}

    async def flaky(request: web.Request) -> web.Response:
        if failing["on"]:
            return web.Response(status=503, text="overloaded")
        return web.json_response({"name": "a"})

    a, b = await upstream(flaky), await upstream(named("b"))
    cooldown = 0.3
    gw = await pygate_gateway(pool([a.url, b.url], retries=0,
                                   breaker={"failures": 2, "cooldown": "300ms"}))
    assert await statuses(gw, 4) == [503, 200, 503, 200]
    ejected = time.monotonic()
    assert await names(gw, 6) == ["b"] * 6
    assert len(a.seen) == 2

    failing["on"] = False

    async def until_served_by_a() -> float:
        while True:
            if (await names(gw, 1)) == ["a"]:
                return time.monotonic()
            await asyncio.sleep(0.02)

    back = await asyncio.wait_for(until_served_by_a(), 3)
    assert back - ejected >= cooldown
    assert Counter(await names(gw, 6)) == {"a": 3, "b": 3}  # closed again

    # A failed trial re-opens the breaker at once (one failure, not `failures`).
    failing["on"] = True
    assert sorted(await statuses(gw, 4)) == [200, 200, 503, 503]
    seen = len(a.seen)
    deadline = time.monotonic() + 3
    while len(a.seen) == seen:  # the trial request, once the cooldown is over
        assert time.monotonic() < deadline
        await statuses(gw, 1)
        await asyncio.sleep(0.02)
    assert await names(gw, 6) == ["b"] * 6
    assert len(a.seen) == seen + 1


async def test_every_breaker_open_gets_503_without_calling_the_upstream(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=502, text="upstream's own 502")

    up = await upstream(broken)
    gw = await pygate_gateway(pool([up.url], breaker={"failures": 1, "cooldown": "1m"}))
    status, _, body = await gw.request("GET", "/api/x")
    assert (status, body) == (502, b"upstream's own 502")  # passed through as it is
    status, body, elapsed = await timed(gw)
    assert status == 503
    doc = expect_problem(body, 503, "Service Unavailable")
    assert doc["detail"] == "no healthy target in upstream 'pool': the circuit breaker is open"
    assert elapsed < 0.1
    assert len(up.seen) == 1


# ---------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------


class Recorder:
    """A plugin whose ``log`` hook hands each access record to the test."""

    def __init__(self) -> None:
        self.records: asyncio.Queue[tuple[dict[str, Any], Any]] = asyncio.Queue()

    @hookimpl
    def log(self, ctx: Context, record: dict[str, Any]) -> None:
        self.records.put_nowait((record, ctx.state.get(TRIED)))


async def test_idempotent_requests_are_retried_on_another_target_others_are_not(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    live = await upstream(named("live"))
    refused = f"http://127.0.0.1:{free_port()}"
    recorder = Recorder()
    gw = await pygate_gateway(pool([refused, live.url], route_plugins={"recorder": {}}),
                              plugins={"recorder": recorder})
    assert await names(gw, 4) == ["live"] * 4
    record, tried = await recorder.records.get()
    assert record["status"] == 200 and record["target"] == live.url
    assert tried == [refused, live.url]
    record, tried = await recorder.records.get()
    assert tried is None  # served at the first attempt
    assert await names(gw, 2, "DELETE") == ["live"] * 2

    assert sorted(await statuses(gw, 4, "POST", data=b"{}")) == [200, 200, 502, 502]
    # PUT is idempotent, but a body streamed from the client cannot be sent again.
    assert sorted(await statuses(gw, 4, "PUT", data=b"x" * 1000)) == [200, 200, 502, 502]


async def test_a_503_answer_is_retried_on_another_target_or_returned_as_it_is(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    async def busy(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text="busy", headers={"Retry-After": "3"})

    overloaded, live = await upstream(busy), await upstream(named("live"))
    gw = await pygate_gateway(pool([overloaded.url, live.url]))
    assert await names(gw, 4) == ["live"] * 4
    assert len(overloaded.seen) == 2
    assert sorted(await statuses(gw, 4, "POST", data=b"{}")) == [200, 200, 503, 503]

    gw = await pygate_gateway(pool([overloaded.url], retries=2))
    before = len(overloaded.seen)
    status, headers, body = await gw.request("GET", "/api/x")
    assert (status, body, headers["Retry-After"]) == (503, b"busy", "3")  # the upstream's own
    assert len(overloaded.seen) == before + 3  # the first attempt and two retries


async def test_retries_stop_at_the_request_deadline(
        pygate_gateway: Gateways, upstream: UpstreamFactory) -> None:
    async def slow_busy(request: web.Request) -> web.Response:
        await asyncio.sleep(0.15)  # the upstream's own pace, part of the scenario
        return web.Response(status=503)

    up = await upstream(slow_busy)
    gw = await pygate_gateway(pool([up.url], retries=10, gateway={"timeout": "400ms"}))
    status, body, elapsed = await timed(gw)
    # Ten retries would take 1.65s: the client has its answer when the 400ms are up,
    # a 504 when they end during an attempt (the usual case), else the last 503.
    assert elapsed < 0.7
    assert 2 <= len(up.seen) <= 3
    if status == 504:
        expect_problem(body, 504, "Gateway Timeout")
    else:
        assert status == 503


# ---------------------------------------------------------------------------
# 502 and 504: fast, problem documents
# ---------------------------------------------------------------------------


async def test_refused_reset_and_malformed_upstreams_get_502_fast(
        pygate_gateway: Gateways, upstream: UpstreamFactory, raw_upstream: Any) -> None:
    resetter: RawUpstream = await raw_upstream(answer_with_reset)
    liar: RawUpstream = await raw_upstream(answer_not_http)
    live = await upstream(named("live"))
    for target, detail in ((f"http://127.0.0.1:{free_port()}", "refused the connection"),
                           (resetter.url, "failed: connection"),
                           (liar.url, "failed: malformed response")):
        gw = await pygate_gateway(pool([target]))
        status, body, elapsed = await timed(gw)
        assert status == 502, body
        doc = expect_problem(body, 502, "Bad Gateway")
        assert doc["detail"].startswith("upstream 'pool' ") and detail in doc["detail"]
        assert elapsed < 0.5
    assert liar.connections == 1  # a malformed answer is not retried

    # A reset before the response is retried on another target.
    gw = await pygate_gateway(pool([resetter.url, live.url]))
    assert await names(gw, 4) == ["live"] * 4


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback address whose listening socket never accepts: connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(2):  # fill the accept queue; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        probe.connect(("127.0.0.1", port))
    except TimeoutError:
        pass
    else:
        pytest.skip("this kernel accepts connections past a full backlog")
    finally:
        probe.close()
    yield f"http://127.0.0.1:{port}"
    for sock in (*fillers, listener):
        sock.close()


async def test_timeouts_get_504_fast_and_connect_timeouts_are_retried(
        pygate_gateway: Gateways, upstream: UpstreamFactory, blackhole: str) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    slow_up: Upstream = await upstream(slow)
    live = await upstream(named("live"))
    try:
        gw = await pygate_gateway(pool([slow_up.url], read_timeout="200ms"))
        status, body, elapsed = await timed(gw)
        assert status == 504
        expect_problem(body, 504, "Gateway Timeout")
        assert 0.19 <= elapsed < 0.6
        assert len(slow_up.seen) == 1  # a read timeout is not retried

        gw = await pygate_gateway(pool([blackhole], connect_timeout="200ms"))
        status, body, elapsed = await timed(gw)
        assert status == 504
        doc = expect_problem(body, 504, "Gateway Timeout")
        assert doc["detail"] == "upstream 'pool' did not accept the connection in time"
        assert 0.39 <= elapsed < 0.8  # the first attempt and one retry

        gw = await pygate_gateway(pool([blackhole, live.url], connect_timeout="200ms"))
        started = time.monotonic()
        assert await names(gw, 2) == ["live", "live"]
        assert time.monotonic() - started < 0.6
    finally:
        release.set()
