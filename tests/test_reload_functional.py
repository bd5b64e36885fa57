"""Reload (PRODUCT.md section 8) by its three routes, against real ``pygate serve`` processes.

SIGHUP, ``POST /reload`` and a file change under ``--watch``, each ten times under a
continuous client load, fail no request, with one process and with two workers. An
invalid file is refused with its errors and the running configuration stays. What
did not change survives: upstream keep-alive connections (the upstream sees the same
connection before and after), health verdicts, rate-limit counters, cache entries.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.admin_support import Admin, Load, admin_section, events, eventually
from tests.conftest import ServeFactory, UpstreamFactory, free_port


def connection_port(request: web.Request) -> int:
    """The gateway's side of the upstream connection this request came on."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else 0


async def port_echo(request: web.Request) -> web.Response:
    return web.json_response({"port": connection_port(request), "path": request.path})


def write(path: Path, text: str, *, atomic: bool = False) -> None:
    """Write the file in place, or as editors and deploy tools do: a new file renamed."""
    if atomic:
        temporary = path.with_name(path.name + ".new")
        temporary.write_text(text)
        os.replace(temporary, path)
    else:
        path.write_text(text)


# ---------------------------------------------------------------------------
# Ten reloads by each route, under load
# ---------------------------------------------------------------------------


def load_config(up_url: str, admin_port: int, workers: int, n: int) -> str:
    return f"""
[gateway]
workers = {workers}

[upstreams.app]
targets = ["{up_url}"]

[[routes]]
name = "api"
path = "/api"
upstream = "app"

[[routes]]
name = "side"
path = "/side-{n}"
upstream = "app"
""" + admin_section(admin_port)


async def serving(admin: Admin, generation: int) -> bool:
    try:
        status = await admin.get("/status")
    except (aiohttp.ClientError, AssertionError):
        return False
    return (status["generation"] == generation
            and all(p.get("generation") == generation for p in status["processes"])
            and len(status["processes"]) == status["workers"])


@pytest.mark.parametrize(("trigger", "workers"), [
    ("signal", 1), ("admin", 1), ("watch", 1), ("signal", 2), ("admin", 2), ("watch", 2)])
async def test_ten_reloads_under_load_fail_no_request(
        serve: ServeFactory, upstream: UpstreamFactory, http: aiohttp.ClientSession,
        trigger: str, workers: int) -> None:
    ports: set[int] = set()

    async def handler(request: web.Request) -> web.Response:
        ports.add(connection_port(request))
        return web.Response(text="ok")

    up = await upstream(handler)
    admin = Admin(http, free_port())
    extra = ("--watch",) if trigger == "watch" else ()
    gw = await serve(load_config(up.url, admin.port, workers, 0), *extra)
    await admin.wait()
    await eventually(lambda: serving(admin, 1), what="the first configuration serves")

    load = Load(gw.url, ["/api/a", "/api/b/c"])
    load.start()
    await asyncio.sleep(0.3)
    for n in range(1, 11):
        write(gw.config_path, load_config(up.url, admin.port, workers, n), atomic=n % 2 == 0)
        if trigger == "signal":
            gw.proc.send_signal(signal.SIGHUP)
        elif trigger == "admin":
            reply = await admin.reload()
            assert reply.status == 200, reply.text
            assert reply.json() == {"generation": n + 1}
        await eventually(lambda n=n: serving(admin, n + 1), within=15.0,
                         what=f"generation {n + 1} serves")
        assert (await http.get(f"{gw.url}/side-{n}/x")).status == 200
        await asyncio.sleep(0.1)  # requests on the new configuration before the next one
    await load.stop()

    print(f"{trigger}, {workers} worker(s): {load.ok} requests during 10 reloads, "
          f"{len(load.failures)} failed, {len(ports)} upstream connections")
    assert load.failures == [], load.failures[:10]
    assert load.ok > 100, load.ok
    assert len(events(gw, "reloaded")) == 10 * workers
    # the process that decides (the supervisor with workers) names what asked for it
    deciding = [e for e in events(gw, "reloading") if "worker" not in e]
    assert deciding and {e.get("trigger") for e in deciding} == {trigger}, deciding[:3]
    assert not events(gw, "reload refused") and not events(gw, "reload failed")
    # The upstream pool survived every reload: no new connection per reload (at most one
    # per concurrent request: the load's clients and the test's own; rebuilt pools would
    # have opened at least eleven per worker).
    assert len(ports) <= (load.tasks + 4) * workers, len(ports)
    assert "Traceback" not in gw.stderr()
    assert await gw.terminate() == 0


# ---------------------------------------------------------------------------
# Invalid configurations
# ---------------------------------------------------------------------------


async def test_an_invalid_file_is_refused_by_every_route(
        serve: ServeFactory, upstream: UpstreamFactory, http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())
    good = load_config(up.url, admin.port, 1, 0)
    gw = await serve(good, "--watch")
    await admin.wait()

    bad = good.replace('name = "api"', 'name = "api"\nstrip_pth = true')
    bad = bad.replace('path = "/side-0"\nupstream = "app"', 'path = "/side-0"\nupstream = "ap"')
    write(gw.config_path, bad)
    reply = await admin.reload()
    assert reply.status == 400 and reply.headers["Content-Type"] == "application/problem+json"
    doc = reply.json()
    assert doc["status"] == 400 and "running configuration stays" in doc["detail"]
    assert {"path", "message"} <= set(doc["errors"][0])
    paths = [e["path"] for e in doc["errors"]]
    assert "routes[0].strip_pth" in paths and "routes[1].upstream" in paths, doc
    assert "did you mean 'strip_path'" in doc["errors"][paths.index("routes[0].strip_pth")][
        "message"]

    gw.proc.send_signal(signal.SIGHUP)
    await eventually(_async(lambda: len(events(gw, "reload refused")) >= 3),
                     what="refused by the API, the watcher and SIGHUP")
    triggers = {e.get("trigger") for e in events(gw, "reloading")}
    assert {"signal", "watch"} <= triggers
    refused = events(gw, "reload refused")[-1]
    assert refused["file"] == str(gw.config_path)
    assert any(line.startswith("routes[0].strip_pth:") for line in refused["errors"])

    status = await admin.get("/status")
    assert status["generation"] == 1
    assert (await http.get(gw.url + "/api/still")).status == 200
    assert (await http.get(gw.url + "/side-0/still")).status == 200

    write(gw.config_path, "[gateway\n")  # not even TOML
    broken = await admin.reload()
    assert broken.status == 400 and "invalid TOML" in broken.json()["errors"][0]["message"]
    write(gw.config_path, load_config(up.url, admin.port, 1, 1))
    assert (await admin.reload()).json() == {"generation": 2}
    assert (await http.get(gw.url + "/side-1/x")).status == 200


def _async(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def wrapped() -> Any:
        return check()

    return wrapped


# ---------------------------------------------------------------------------
# What survives a reload
# ---------------------------------------------------------------------------


async def test_upstream_connections_and_health_survive_a_reload(
        serve: ServeFactory, upstream: UpstreamFactory, http: aiohttp.ClientSession) -> None:
    health = {"ok": False}

    async def check(request: web.Request) -> web.Response:
        return web.Response(status=200 if health["ok"] else 500)

    app = await upstream(routes={"GET /health": check, "GET /{tail:.*}": port_echo})
    sick = await upstream(routes={"GET /health": check, "GET /{tail:.*}": port_echo})
    admin = Admin(http, free_port())

    def text(timeout: str = "30s", extra_route: bool = False) -> str:
        side = '\n[[routes]]\nname = "more"\npath = "/more"\nupstream = "app"\n' \
            if extra_route else ""
        return f"""
[upstreams.app]
targets = ["{app.url}"]
read_timeout = "{timeout}"

[upstreams.sick]
targets = ["{sick.url}"]
health = {{ path = "/health", interval = "100ms", unhealthy = 1, healthy = 1 }}

[[routes]]
name = "api"
path = "/api"
upstream = "app"
{side}""" + admin_section(admin.port)

    gw = await serve(text())
    await admin.wait()

    async def port() -> int:
        async with http.get(gw.url + "/api/x") as response:
            assert response.status == 200
            return int((await response.json())["port"])

    async def sick_health() -> bool | None:
        ups = {u["name"]: u for u in (await admin.get("/upstreams"))["upstreams"]}
        return bool(ups["sick"]["targets"][0]["healthy"])

    before = await port()
    assert await port() == before  # kept alive
    await eventually(_negate(sick_health), what="the sick target is found unhealthy")

    gw.config_path.write_text(text(extra_route=True))
    assert (await admin.reload()).json() == {"generation": 2}
    assert await port() == before  # the same keep-alive connection to the upstream
    assert await sick_health() is False  # the verdict carried over, no fresh "healthy"
    assert (await http.get(gw.url + "/more/x")).status == 200
    await eventually(_async(lambda: events(gw, "previous configuration stopped")),
                     what="the old configuration stops")
    assert await port() == before  # still open once the old gateway has stopped

    health["ok"] = True
    await eventually(sick_health, what="the target recovers under the kept checks")

    # A changed upstream gets new pools (and the old ones close with the old gateway).
    gw.config_path.write_text(text(timeout="20s", extra_route=True))
    assert (await admin.reload()).json() == {"generation": 3}
    assert await port() != before
    assert "Traceback" not in gw.stderr()


def _negate(check: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return not await check()

    return wrapped


async def test_rate_limit_counters_and_cache_entries_survive_a_reload(
        serve: ServeFactory, upstream: UpstreamFactory, http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())

    def text(n: int) -> str:
        return f"""
[[routes]]
name = "limited"
path = "/limited"
upstream = "{up.url}"
plugins = {{ rate-limit = {{ limit = 3, window = "1m" }} }}

[[routes]]
name = "cached"
path = "/cached"
upstream = "{up.url}"
plugins = {{ cache = {{ ttl = "60s" }} }}

[[routes]]
name = "side"
path = "/side-{n}"
upstream = "{up.url}"
""" + admin_section(admin.port)

    gw = await serve(text(0), "--watch")
    await admin.wait()
    for _ in range(3):
        assert (await http.get(gw.url + "/limited/x")).status == 200
    async with http.get(gw.url + "/cached/x") as response:
        assert response.headers["X-Cache"] == "MISS"
    seen = len(up.seen)

    gw.config_path.write_text(text(1))
    assert (await admin.reload()).json() == {"generation": 2}
    write(gw.config_path, text(2), atomic=True)
    await eventually(lambda: serving(admin, 3), what="the watcher reloads")
    gw.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: serving(admin, 4), what="SIGHUP reloads")

    assert (await http.get(gw.url + "/limited/x")).status == 429  # the count went on
    async with http.get(gw.url + "/cached/x") as response:
        assert response.headers["X-Cache"] == "HIT"
    assert len(up.seen) == seen  # neither reached the upstream
