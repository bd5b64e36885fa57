"""Canary releases end to end (PRODUCT.md section 11): real ``pygate serve`` processes in
front of real aiohttp upstreams that answer with their own name, so each test sees which
side served a request the way a client (and the access log) would.

The split over thousands of requests, sticky callers (by header, cookie, IP and consumer)
kept on one side across workers and restarts, the pinning header, weights 0 and 100, the
canary's own retries, breaker and health checks, ``pygate explain``, the access log and
the metrics.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pygate.canary import bucket
from tests.admin_support import Admin, admin_section, eventually
from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    ServeFactory,
    UpstreamFactory,
    accepts_connections,
    free_port,
    parse_responses,
    problem,
)
from tests.test_workers_functional import one_per_worker, workers_ready


def named(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"name": name, "path": request.raw_path})
    return handler


async def sides(http: aiohttp.ClientSession, url: str, requests: Iterable[Mapping[str, str]],
                *, concurrency: int = 20) -> list[str]:
    """Who served each request (one per headers mapping), ``concurrency`` at a time."""
    todo = list(requests)
    served: list[str] = [""] * len(todo)
    queue = iter(range(len(todo)))

    async def client() -> None:
        for index in queue:
            async with http.get(url, headers=todo[index]) as response:
                body = await response.json()
                assert response.status == 200, body
                served[index] = body["name"]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return served


def canary_route(main: str, canary: str, *, path: str = "/api/users", **settings: Any) -> str:
    table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    return f"""
[upstreams.users]
targets = ["{main}"]

[upstreams.users-v2]
targets = ["{canary}"]

[[routes]]
name = "users"
path = "{path}"
upstream = "users"
canary = {{ upstream = "users-v2", {table} }}
"""


def expected_side(key: str, weight: float) -> str:
    """The side the documented hash puts a sticky caller on (canary name ``users-v2``)."""
    return "v2" if bucket("users-v2", key) < weight * 100 else "v1"


# ---------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [10, 50])
async def test_the_split_holds_over_2000_requests(
        weight: int, gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    gw = await gateway_process(canary_route(v1.url, v2.url, weight=weight))
    served = await sides(http, gw.url + "/api/users/7", [{}] * 2000)
    share = served.count("v2") / len(served)
    assert abs(share - weight / 100) <= 0.02, share
    assert len(v1.seen) + len(v2.seen) == 2000
    assert {s.path for s in [*v1.seen, *v2.seen]} == {"/7"}  # strip_path on both sides


@pytest.mark.parametrize(("weight", "side"), [(0, "v1"), (100, "v2")])
async def test_weight_0_and_100_send_everything_to_one_side(
        weight: int, side: str, gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    gw = await gateway_process(canary_route(v1.url, v2.url, weight=weight, sticky="ip",
                                            header="X-Canary"))
    assert set(await sides(http, gw.url + "/api/users", [{}] * 200)) == {side}
    # the header pins a request whatever the weight: a canary at 0 can be tried by hand
    assert set(await sides(http, gw.url + "/api/users", [{"X-Canary": "always"}] * 20)) \
        == {"v2"}
    assert set(await sides(http, gw.url + "/api/users", [{"X-Canary": "never"}] * 20)) \
        == {"v1"}


async def test_the_header_pins_requests_to_either_side(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    gw = await gateway_process(canary_route(v1.url, v2.url, weight=50, header="X-Canary"))
    url = gw.url + "/api/users"
    assert set(await sides(http, url, [{"X-Canary": "always"}] * 100)) == {"v2"}
    assert set(await sides(http, url, [{"X-Canary": "NEVER"}] * 100)) == {"v1"}
    other = Counter(await sides(http, url, [{"X-Canary": "perhaps"}] * 100))
    assert other == {"v1": 50, "v2": 50}  # any other value: the split as usual


# ---------------------------------------------------------------------------
# Sticky callers
# ---------------------------------------------------------------------------

CALLERS = 40


def sticky_case(kind: str, caller: int) -> tuple[dict[str, str], str]:
    """The request headers of caller N for a sticky kind, and its sticky key."""
    if kind == "header:X-User":
        return {"X-User": f"user-{caller}"}, f"h=user-{caller}"
    if kind == "cookie:session":
        return {"Cookie": f"theme=dark; session=s{caller}"}, f"k=s{caller}"
    if kind == "ip":
        return {"X-Forwarded-For": f"10.9.0.{caller}"}, f"ip=10.9.0.{caller}"
    if caller % 4 == 0:  # consumer: a quarter of them anonymous, known by their IP
        return {"X-Forwarded-For": f"10.8.0.{caller}"}, f"ip=10.8.0.{caller}"
    return {"X-API-Key": f"key-{caller}"}, f"c=consumer-{caller}"


@pytest.mark.parametrize("sticky", ["header:X-User", "cookie:session", "ip", "consumer"])
async def test_a_sticky_caller_stays_on_one_side(
        sticky: str, gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    consumers = ", ".join(f'consumer-{n} = "key-{n}"' for n in range(CALLERS))
    plugins = ("[plugins.key-auth]\noptional = true\n"
               f"consumers = {{ {consumers} }}\n") if sticky == "consumer" else ""
    gw = await gateway_process('[gateway]\ntrusted_proxies = ["127.0.0.1/32"]\n' + plugins
                               + canary_route(v1.url, v2.url, weight=50, sticky=sticky))
    cases = [sticky_case(sticky, n) for n in range(CALLERS)]
    rounds = 5
    served = await sides(http, gw.url + "/api/users",
                         [headers for _ in range(rounds) for headers, _ in cases])
    by_caller: dict[int, set[str]] = {}
    for index, side in enumerate(served):
        by_caller.setdefault(index % CALLERS, set()).add(side)
    assert all(len(seen) == 1 for seen in by_caller.values()), by_caller
    # each caller is where the documented hash of its key puts it: both sides get callers
    assert {n: seen.pop() for n, seen in by_caller.items()} == {
        n: expected_side(key, 50) for n, (_, key) in enumerate(cases)}
    assert 0.2 < served.count("v2") / len(served) < 0.8


async def listening(gw: GatewayProcess) -> None:
    """Until ``gw`` accepts connections."""
    async def check() -> bool:
        return await accepts_connections(gw.port)

    await eventually(check, what="the gateway listens")


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                  headers: Mapping[str, str]) -> str:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n{lines}\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
    response = parse_responses(head)[0]
    body = await reader.readexactly(int(response.headers["Content-Length"]))
    assert response.status == 200, body
    return str(json.loads(body)["name"])


async def test_sticky_callers_keep_their_side_across_workers_and_restarts(
        serve: ServeFactory, upstream: UpstreamFactory) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    config = canary_route(v1.url, v2.url, weight=30, sticky="header:X-User")
    cases = [({"X-User": f"user-{n}"}, f"h=user-{n}") for n in range(CALLERS)]
    expected = [expected_side(key, 30) for _, key in cases]
    assert 0 < expected.count("v2") < CALLERS
    for _ in range(2):  # a gateway, then another one (a restart: other processes)
        gw = await serve(config, "--workers", "2")
        await listening(gw)
        workers = await workers_ready(gw, 2)
        for conn in (await one_per_worker(gw.port, workers)).values():
            got = [await raw_get(conn.reader, conn.writer, "/api/users", headers)
                   for headers, _ in cases]
            conn.close()
            assert got == expected  # every worker puts every caller on the same side
        assert await gw.terminate() == 0


# ---------------------------------------------------------------------------
# The canary is just another upstream: its retries, breaker and health checks
# ---------------------------------------------------------------------------


async def test_the_canarys_own_retries_breaker_and_health_checks_apply(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    sick = await upstream(routes={"GET /health": unavailable, "GET /{tail:.*}": named("sick")})
    dead = f"http://127.0.0.1:{free_port()}"
    admin_port = free_port()
    gw = await gateway_process(f"""
{admin_section(admin_port)}
[upstreams.users]
targets = ["{v1.url}"]
breaker = {{ failures = 1, cooldown = "1m" }}

[upstreams.half-down]                 # one target refuses: retried on the other
targets = ["{dead}", "{v2.url}"]
retries = 1
breaker = {{ failures = 1, cooldown = "1m" }}

[upstreams.all-down]
targets = ["{dead}"]
breaker = {{ failures = 2, cooldown = "1m" }}

[upstreams.unhealthy]
targets = ["{sick.url}"]
health = {{ path = "/health", interval = "100ms", timeout = "1s", unhealthy = 1 }}

[[routes]]
name = "a"
path = "/a"
upstream = "users"
canary = {{ upstream = "half-down", weight = 50, header = "X-Canary" }}

[[routes]]
name = "b"
path = "/b"
upstream = "users"
canary = {{ upstream = "all-down", weight = 50, header = "X-Canary" }}

[[routes]]
name = "c"
path = "/c"
upstream = "users"
canary = {{ upstream = "unhealthy", weight = 50, header = "X-Canary" }}
""")
    always, never = {"X-Canary": "always"}, {"X-Canary": "never"}
    # retries: the refused target is retried on the other, then ejected by its breaker
    assert set(await sides(http, gw.url + "/a", [always] * 20, concurrency=1)) == {"v2"}
    # a canary that is down answers with its own errors: no fallback to the route's upstream
    statuses = []
    for _ in range(4):
        async with http.get(gw.url + "/b", headers=always) as response:
            statuses.append((response.status, problem(await response.read())["detail"]))
    # (its one retry fails too: two failures open its breaker)
    assert statuses == [(502, "upstream 'all-down' refused the connection")] + [
        (503, "no healthy target in upstream 'all-down': the circuit breaker is open")] * 3
    # ... while the route's own upstream, and its breaker, are untouched
    assert set(await sides(http, gw.url + "/b", [never] * 10)) == {"v1"}

    async def ejected() -> bool:
        async with http.get(gw.url + "/c", headers=always) as response:
            await response.read()
            return response.status == 503
    await eventually(ejected, what="the canary's health checks take its target out")
    async with http.get(gw.url + "/c", headers=always) as response:
        assert problem(await response.read())["detail"] == \
            "no healthy target in upstream 'unhealthy'"
    assert set(await sides(http, gw.url + "/c", [never] * 10)) == {"v1"}

    admin = Admin(http, admin_port)
    table = {up["name"]: up for up in (await admin.get("/upstreams"))["upstreams"]}
    assert [t["breaker"] for t in table["users"]["targets"]] == ["closed"]
    assert [t["breaker"] for t in table["half-down"]["targets"]] == ["open", "closed"]
    assert [t["breaker"] for t in table["all-down"]["targets"]] == ["open"]
    assert [t["healthy"] for t in table["unhealthy"]["targets"]] == [False]


async def unavailable(request: web.Request) -> web.Response:
    return web.Response(status=503)


# ---------------------------------------------------------------------------
# What operators see: explain, the access log, the metrics
# ---------------------------------------------------------------------------


async def test_explain_shows_both_sides_and_the_weight(tmp_path: Path) -> None:
    config = tmp_path / "pygate.toml"
    config.write_text(canary_route("http://127.0.0.1:3001", "http://127.0.0.1:3011",
                                   weight=10, sticky="header:X-User", header="X-Canary"))

    async def explain(*args: str) -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pygate", "explain", "-c", str(config), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        return out.decode().splitlines()

    lines = await explain("GET", "/api/users/7?page=2", "-H", "X-Canary: always")
    assert "upstream: users (round-robin: http://127.0.0.1:3001)" in lines
    assert ("canary: users-v2 (round-robin: http://127.0.0.1:3011): 10% of requests, sticky "
            "by header X-User (the client IP without one); X-Canary: always / never pins a "
            "request to / away from it") in lines
    assert "this request goes to: the canary (X-Canary: always)" in lines
    assert "forwarded as: GET /7?page=2" in lines
    side = "the canary" if bucket("users-v2", "h=bob") < 1000 else "the route's upstream"
    lines = await explain("GET", "/api/users", "-H", "X-User: bob")
    assert any(line.startswith(f"this request goes to: {side} (the header X-User: bucket ")
               for line in lines), lines


async def test_the_access_log_and_the_metrics_name_the_side_that_served(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    v1, v2 = await upstream(named("v1")), await upstream(named("v2"))
    access = tmp_path / "access.log"
    admin_port = free_port()
    gw = await gateway_process(
        admin_section(admin_port)
        + f'\n[plugins.logging]\npath = "{access}"\nflush_interval = "20ms"\n'
        + "\n[plugins.prometheus]\n"
        + canary_route(v1.url, v2.url, weight=0, header="X-Canary"))
    for n, pin in enumerate(["always", "never", "always", "always", "never"]):
        async with http.get(gw.url + "/api/users",
                            headers={"X-Canary": pin, "X-Request-ID": f"req-{n}-{pin}"}) as r:
            assert (await r.json())["name"] == ("v2" if pin == "always" else "v1")

    def lines() -> list[dict[str, Any]]:
        text = access.read_text() if access.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    async def logged() -> bool:
        return len(lines()) == 5

    await eventually(logged, what="five access lines")
    served = {line["request_id"]: (line["upstream"], line["target"]) for line in lines()}
    for request_id, (name, target) in served.items():
        if request_id.endswith("always"):
            assert (name, target) == ("users-v2", v2.url)
        else:
            assert (name, target) == ("users", v1.url)
    metrics = await Admin(http, admin_port).call("GET", "/metrics")
    counts = dict(re.findall(r'pygate_upstream_duration_seconds_count\{[^}]*upstream="([^"]+)"'
                             r'[^}]*\} (\S+)', metrics.text))
    assert {name: float(value) for name, value in counts.items()} == {
        "users-v2": 3.0, "users": 2.0}

