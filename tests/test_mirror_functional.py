"""Traffic mirroring end to end (PRODUCT.md section 11): real ``pygate serve`` processes,
a real route upstream and a real mirror upstream that keeps every copy it receives.

The copy is the request as the route's upstream got it (method, path, query, headers
after ``transform_request``, the same ``X-Request-ID``, the body byte for byte, streamed
bodies included); ``percent`` and ``max_body`` decide what is copied; a mirror that is
down, failing or slow costs the client nothing; copies in flight are bounded and the
dropped ones counted; the mirror's failures feed its own breaker only; shutdown does
not wait for copies.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.admin_support import Admin, admin_section, events
from tests.conftest import GatewayFactory, UpstreamFactory, free_port, raw_exchange


@dataclass
class Received:
    """One request as an upstream received it."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Service:
    """A loopback upstream that keeps what it receives; a mirror may also answer with
    ``status``, or hold every answer until ``release`` is set."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    status: int = 200
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path,
                                      CIMultiDictProxy(CIMultiDict(request.headers)), body))
        if self.hold:
            await self.release.wait()
        return web.json_response({"served_by": "main", "size": len(body)}, status=self.status,
                                 headers={"X-Main": "yes"})


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def service(upstream: UpstreamFactory) -> AsyncIterator[ServiceFactory]:
    made: list[Service] = []

    async def factory(**options: Any) -> Service:
        svc = Service(**options)
        svc.url = (await upstream(svc.handle)).url
        made.append(svc)
        return svc

    yield factory
    for svc in made:  # let held answers go before the upstreams stop
        svc.release.set()


def mirrored(main: str, mirror: str, *, mirror_options: str = "", admin: int | None = None,
             **settings: Any) -> str:
    table = ", ".join(f"{key} = {value!r}".replace("'", '"') for key, value in settings.items())
    return f"""
{admin_section(admin) if admin is not None else ""}
[upstreams.orders]
targets = ["{main}"]

[upstreams.shadow]
targets = ["{mirror}"]
{mirror_options}

[[routes]]
name = "orders"
path = "/api/orders"
upstream = "orders"
mirror = {{ upstream = "shadow"{", " + table if table else ""} }}
"""


async def mirror_counts(admin: Admin) -> dict[str, int]:
    table = {up["name"]: up for up in (await admin.get("/upstreams"))["upstreams"]}
    counts: dict[str, int] = table["shadow"]["mirror"]
    return counts


async def settled(admin: Admin, within: float = 10.0, **expected: int) -> dict[str, int]:
    """The mirror's counts once they match ``expected`` (polled)."""
    deadline = time.monotonic() + within
    while True:
        found = await mirror_counts(admin)
        if all(found.get(key) == value for key, value in expected.items()):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"mirror counts not {expected} within {within}s: {found}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------
# The copy
# ---------------------------------------------------------------------------

UNCHANGED = ("Host", "Content-Length", "Transfer-Encoding")


def same_request(got: Received, sent: Received) -> None:
    """The mirror got what the route's upstream got: only Host (each target's own) and
    the framing of the body (a copy always has a Content-Length) may differ."""
    assert (got.method, got.path, got.body) == (sent.method, sent.path, sent.body)
    assert [(k, v) for k, v in got.headers.items() if k not in UNCHANGED] == \
        [(k, v) for k, v in sent.headers.items() if k not in UNCHANGED]


async def test_the_copy_is_the_request_the_upstream_got(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main, v2, shadow = await service(), await service(), await service()
    admin_port = free_port()
    gw = await gateway_process(
        mirrored(main.url, shadow.url, admin=admin_port)
        + f'\n[upstreams.orders-v2]\ntargets = ["{v2.url}"]\n'
        + '[routes.canary]\nupstream = "orders-v2"\nweight = 0\nheader = "X-Canary"\n'
        + '[routes.plugins.headers]\nrequest = { add = { X-Env = "copy-test" }, '
          'remove = ["X-Secret"] }\n')
    body = os.urandom(50_000)

    async def streamed() -> AsyncIterator[bytes]:
        for offset in range(0, len(body), 7000):
            yield body[offset:offset + 7000]

    sends: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/api/orders/7?x=1&y=%20z", {"X-Request-ID": "copy-1"}, body),
        ("PUT", "/api/orders/8", {}, streamed()),  # chunked: no Content-Length
        ("GET", "/api/orders?page=2", {"X-Request-ID": "copy-3"}, None),
        ("DELETE", "/api/orders/9", {"X-Canary": "always"}, None),  # served by the canary
        ("PATCH", "/api/orders/10", {"Expect": "100-continue"}, b"patch" * 100),
    ]
    ids = []
    for method, path, headers, data in sends:
        async with http.request(method, gw.url + path, data=data,
                                headers={"X-Secret": "s3cret", "X-Other": "kept", **headers},
                                expect100="Expect" in headers) as response:
            assert response.status == 200, await response.text()
            ids.append(response.headers["X-Request-ID"])
    assert ids[0] == "copy-1" and ids[2] == "copy-3"
    await settled(Admin(http, admin_port), sent=5, in_flight=0)
    served = main.received + v2.received
    by_id = {r.headers["X-Request-ID"]: r for r in served}
    assert [r.headers["X-Request-ID"] for r in shadow.received] != []
    assert sorted(r.headers["X-Request-ID"] for r in shadow.received) == sorted(ids)
    for copy in shadow.received:
        same_request(copy, by_id[copy.headers["X-Request-ID"]])
        assert copy.headers["X-Env"] == "copy-test" and "X-Secret" not in copy.headers
        assert copy.headers["X-Other"] == "kept"
    copies = {r.headers["X-Request-ID"]: r for r in shadow.received}
    assert copies["copy-1"].path == "/7?x=1&y=%20z" and copies["copy-1"].body == body
    streamed_copy = copies[ids[1]]
    assert streamed_copy.body == body and streamed_copy.headers["Content-Length"] == "50000"
    assert by_id[ids[1]].headers.get("Transfer-Encoding") == "chunked"  # the original streamed
    assert copies["copy-3"].method == "GET" and copies["copy-3"].body == b""
    assert [r.method for r in v2.received] == ["DELETE"]  # the canary's request is copied too
    assert copies[ids[4]].body == b"patch" * 100


async def test_percent_is_the_share_of_requests_copied(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main, shadow = await service(), await service()
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port, percent=25))
    for _ in range(400):
        async with http.get(gw.url + "/api/orders") as response:
            assert response.status == 200
    counts = await settled(Admin(http, admin_port), in_flight=0)
    assert abs(len(shadow.received) / 400 - 0.25) <= 0.03
    assert counts["sent"] == len(shadow.received) and counts["dropped"] == 0
    assert len(main.received) == 400


async def test_bodies_over_max_body_are_not_copied(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main, shadow = await service(), await service()
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port,
                                        max_body="1KB"))

    def chunked(data: bytes) -> Callable[[], AsyncIterator[bytes]]:
        async def parts() -> AsyncIterator[bytes]:
            for offset in range(0, len(data), 300):
                yield data[offset:offset + 300]
        return parts

    bodies = {"at-limit": os.urandom(1024), "over": os.urandom(1025),
              "streamed-over": os.urandom(2000), "streamed-under": os.urandom(900)}
    for name, data in bodies.items():
        sent: Any = chunked(data)() if name.startswith("streamed") else data
        async with http.post(gw.url + "/api/orders", data=sent,
                             headers={"X-Request-ID": name}) as response:
            assert (await response.json())["size"] == len(data)  # the upstream got it all
    await settled(Admin(http, admin_port), sent=2, too_large=2, in_flight=0)
    assert {r.headers["X-Request-ID"]: r.body for r in shadow.received} == {
        "at-limit": bodies["at-limit"], "streamed-under": bodies["streamed-under"]}
    assert [len(r.body) for r in main.received] == [len(d) for d in bodies.values()]


# ---------------------------------------------------------------------------
# A mirror never costs the client anything
# ---------------------------------------------------------------------------


async def answers(http: aiohttp.ClientSession, url: str, count: int
                  ) -> list[tuple[int, str, str, float]]:
    """``count`` POSTs: (status, body, X-Main header, seconds) of each."""
    out = []
    for n in range(count):
        started = time.monotonic()
        async with http.post(url, data=b"x" * 100, headers={"X-Request-ID": f"r{n}"},
                             timeout=aiohttp.ClientTimeout(total=10)) as response:
            text = await response.text()
            out.append((response.status, text, response.headers.get("X-Main", ""),
                        time.monotonic() - started))
    return out


@pytest.mark.parametrize("mirror", ["refused", "500"])
async def test_a_mirror_that_is_down_or_fails_changes_nothing(
        mirror: str, gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main = await service()
    shadow = await service(status=500)
    target = f"http://127.0.0.1:{free_port()}" if mirror == "refused" else shadow.url
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, target, admin=admin_port))
    got = await answers(http, gw.url + "/api/orders", 30)
    assert {(status, body, header) for status, body, header, _ in got} == {
        (200, '{"served_by": "main", "size": 100}', "yes")}
    if mirror == "refused":
        counts = await settled(Admin(http, admin_port), failed=30, in_flight=0)
        assert counts["sent"] == 0
    else:
        await settled(Admin(http, admin_port), sent=30, in_flight=0)
        assert len(shadow.received) == 30
    assert "Traceback" not in gw.stderr()
    assert not [e for e in gw.log_events() if e.get("level") == "error"]


async def test_a_slow_mirror_does_not_slow_the_client(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main = await service()
    shadow = await service(hold=True)  # answers no copy until the end of the test
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port)
                               + '\n[[routes]]\nname = "plain"\npath = "/plain"\n'
                                 'upstream = "orders"\n')
    plain = await answers(http, gw.url + "/plain", 20)  # the same upstream, no mirror
    held = await answers(http, gw.url + "/api/orders", 20)
    assert {status for status, *_ in held} == {200}
    await settled(Admin(http, admin_port), in_flight=20, sent=0)
    assert len(shadow.received) == 20  # every copy reached the mirror, none answered
    # every copy is still waiting on the mirror; the client waited for none of them
    latency = sorted(seconds for *_, seconds in held)
    baseline = sorted(seconds for *_, seconds in plain)
    assert latency[-1] < 1.0, latency
    assert latency[len(latency) // 2] < baseline[len(baseline) // 2] * 3 + 0.05, \
        (latency, baseline)
    shadow.release.set()
    await settled(Admin(http, admin_port), in_flight=0, sent=20)


async def test_copies_in_flight_are_bounded_and_the_dropped_ones_counted(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main = await service()
    shadow = await service(hold=True)
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port,
                                        mirror_options="max_connections = 3"))
    got = await answers(http, gw.url + "/api/orders", 10)
    assert {status for status, *_ in got} == {200}
    admin = Admin(http, admin_port)
    counts = await settled(admin, in_flight=3, dropped=7)
    assert counts["limit"] == 3 and counts["sent"] == 0
    assert len(shadow.received) == 3
    warned = events(gw, "mirror copies dropped: too many in flight")
    assert warned and warned[0]["upstream"] == "shadow" and warned[0]["limit"] == 3
    shadow.release.set()
    await settled(admin, in_flight=0, sent=3)
    await answers(http, gw.url + "/api/orders", 1)  # places free again: copied
    await settled(admin, in_flight=0, sent=4, dropped=7)


async def test_mirrored_calls_feed_only_the_mirrors_breaker(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main = await service()
    shadow = await service(status=503)
    admin_port = free_port()
    gw = await gateway_process(f"""
{admin_section(admin_port)}
[upstreams.orders]
targets = ["{main.url}"]
breaker = {{ failures = 1, cooldown = "1m" }}

[upstreams.shadow]
targets = ["{shadow.url}"]
retries = 0
breaker = {{ failures = 2, cooldown = "1m" }}

[[routes]]
name = "orders"
path = "/api/orders"
upstream = "orders"
mirror = {{ upstream = "shadow" }}
""")
    admin = Admin(http, admin_port)
    for _ in range(10):
        async with http.get(gw.url + "/api/orders") as response:
            assert response.status == 200
        # the copy is counted in flight before the response leaves: one copy at a time
        await settled(admin, in_flight=0)
    counts = await settled(admin, in_flight=0, sent=2, failed=8)  # 503s, then its breaker
    assert counts["dropped"] == 0
    assert len(shadow.received) == 2
    table = {up["name"]: up for up in (await admin.get("/upstreams"))["upstreams"]}
    assert [t["breaker"] for t in table["orders"]["targets"]] == ["closed"]
    assert [t["breaker"] for t in table["shadow"]["targets"]] == ["open"]
    assert {e["upstream"] for e in events(gw, "breaker open")} == {"shadow"}


async def test_a_client_that_breaks_off_its_body_is_not_copied(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main, shadow = await service(), await service()
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port))
    head = (b"POST /api/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000\r\n"
            b"X-Request-ID: cut-short\r\n\r\n")
    await raw_exchange(gw.port, head, b"x" * 100, read_for=0.3)
    await settled(Admin(http, admin_port), in_flight=0)
    async with http.post(gw.url + "/api/orders", data=b"whole") as response:
        assert response.status == 200
    await settled(Admin(http, admin_port), in_flight=0, sent=1)
    assert [r.body for r in shadow.received] == [b"whole"]
    assert "Traceback" not in gw.stderr()


# ---------------------------------------------------------------------------
# Shutdown
# ---------------------------------------------------------------------------


async def test_shutdown_waits_for_copies_only_briefly(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main = await service()
    shadow = await service(hold=True)
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port))
    await answers(http, gw.url + "/api/orders", 3)
    await settled(Admin(http, admin_port), in_flight=3)
    started = time.monotonic()
    assert await gw.terminate() == 0
    took = time.monotonic() - started
    assert took < 4.0, took  # the copies would wait for gateway.timeout (30s)
    cut = events(gw, "mirror copies cut at shutdown")
    assert cut and cut[0]["upstream"] == "shadow" and cut[0]["count"] == 3
    assert "Traceback" not in gw.stderr()


async def test_a_reload_keeps_the_copies_in_flight_and_the_counts(
        gateway_process: GatewayFactory, service: ServiceFactory,
        http: aiohttp.ClientSession) -> None:
    main = await service()
    shadow = await service(hold=True)
    admin_port = free_port()
    gw = await gateway_process(mirrored(main.url, shadow.url, admin=admin_port))
    admin = Admin(http, admin_port)
    await answers(http, gw.url + "/api/orders", 2)
    await settled(admin, in_flight=2)
    reply = await admin.reload()  # the same file: the mirror upstream is kept
    assert reply.status == 200, reply.text
    await settled(admin, in_flight=2, sent=0)
    shadow.release.set()
    await settled(admin, in_flight=0, sent=2)
    await answers(http, gw.url + "/api/orders", 1)
    await settled(admin, in_flight=0, sent=3)
    assert len(shadow.received) == 3
