"""The admin listener (PRODUCT.md section 8), against real ``pygate serve`` processes.

Every endpoint, the token (401 without it, compared in constant time), the probes
(``/ready`` 503 during a drain, ``/healthz``), the cache purge on memory and on a
real Redis shared by two gateways, and ``--workers 2``: one listener speaking for
both workers (status, summed stats, upstreams, purge, reload, a replaced worker 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import pygate
from pygate.admin import AdminServer
from pygate.admin.app import STATIC_DIR, token_matches
from pygate.app import build_gateway
from pygate.config import load_data
from pygate.listener import bind
from pygate.reload import Reloader
from pygate.server import start
from pygate.testing import RedisServer
from tests.admin_support import TOKEN, Admin, admin_section, eventually
from tests.conftest import (
    GatewayFactory,
    UpstreamFactory,
    free_port,
    launch_gateway,
    problem,
)
from tests.test_workers_functional import children, one_per_worker, workers_ready

PROBLEM = "application/problem+json"


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with http.get(url, **kwargs) as response:
        return response.status, response.headers, await response.text()


# ---------------------------------------------------------------------------
# Every endpoint, one process
# ---------------------------------------------------------------------------


def full_config(up_url: str, dead_url: str, admin_port: int) -> str:
    return f"""
[upstreams.users]
targets = ["{up_url}"]
breaker = {{ failures = 3, cooldown = "30s" }}

[plugins.jwt]
secret = "a-secret-of-at-least-thirty-two-bytes!!"
algorithms = ["HS256"]
optional = true

[[routes]]
name = "users"
path = "/api/users"
upstream = "users"

[[routes]]
name = "user"
path = "/api/users/{{id}}"
upstream = "users"
plugins = {{ jwt = false }}

[[routes]]
name = "broken"
path = "/broken"
upstream = "{dead_url}"
""" + admin_section(admin_port)


async def test_every_endpoint_of_one_process(gateway_process: GatewayFactory,
                                             upstream: UpstreamFactory,
                                             http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())
    gw = await gateway_process(full_config(up.url, f"http://127.0.0.1:{free_port()}",
                                           admin.port))
    await admin.wait()
    for path, status in [("/api/users/7", 200)] * 3 + [("/api/users", 200)] * 2 + [
            ("/broken", 502), ("/nowhere", 404)]:
        assert (await get(http, gw.url + path))[0] == status, path

    status = await admin.get("/status")
    assert status["version"] == pygate.__version__
    assert status["pid"] == gw.pid and status["workers"] == 1 and status["generation"] == 1
    assert status["config"] == {
        "file": str(gw.config_path),
        "sha256": hashlib.sha256(gw.config_path.read_bytes()).hexdigest()}
    assert status["uptime_s"] >= 0 and status["ready"] is True and not status["draining"]
    [process] = status["processes"]
    assert process["pid"] == gw.pid and process["generation"] == 1 and process["ready"]

    table = (await admin.get("/routes"))["routes"]
    assert [r["name"] for r in table] == ["user", "users", "broken"]  # match order
    assert [r["order"] for r in table] == [0, 1, 2]
    assert {r["kind"] for r in table} == {"upstream"}
    assert [r["plugins"] for r in table] == [[], ["jwt"], ["jwt"]]
    assert table[0]["path"] == "/api/users/{id}" and table[0]["target"] == "users"
    assert all(r["canary"] is None and r["mirror"] is None for r in table)

    upstreams = {u["name"]: u for u in (await admin.get("/upstreams"))["upstreams"]}
    [target] = upstreams["users"]["targets"]
    assert target["target"] == up.url and target["healthy"] is True
    assert target["breaker"] == "closed" and target["active"] == 0
    assert upstreams["users"]["breaker_enabled"] is True
    assert target["workers"] == [{"worker": 1, "healthy": True, "breaker": "closed",
                                  "active": 0}]

    plugins = await admin.get("/plugins")
    assert "jwt" in {p["name"] for p in plugins["installed"]}
    [jwt] = plugins["enabled"]
    assert jwt["name"] == "jwt" and "authenticate" in jwt["hooks"]
    assert jwt["global"]["secret"] == "**********"  # masked, as pygate explain shows it
    assert set(jwt["routes"]) == {"users", "broken"}
    assert jwt["routes"]["users"]["secret"] == "**********"
    assert "thirty-two" not in (await admin.call("GET", "/plugins")).text

    async def counted() -> Any:
        stats = await admin.get("/stats")
        return stats if stats["routes"].get("broken", {}).get("requests") == 1 else None

    stats = await eventually(counted, what="the requests are counted")
    assert stats["workers"] == 1 and stats["epoch"] == f"1:{gw.pid}"
    assert stats["buckets_ms"][:3] == [0.25, 0.5, 0.75]
    routes = stats["routes"]
    assert routes["user"]["requests"] == 3 and routes["users"]["requests"] == 2
    assert routes["user"]["errors"] == 0 and routes["broken"]["errors"] == 1
    assert stats["unrouted"]["requests"] == 1 and stats["unrouted"]["errors"] == 0
    for counters in [*routes.values(), stats["unrouted"]]:
        assert sum(counters["latency"]) == counters["requests"]
        assert len(counters["latency"]) <= len(stats["buckets_ms"]) + 1
        assert counters["sum_ms"] > 0

    for method, path, code, detail in [
            ("GET", "/metrics", 404, "the prometheus plugin is not enabled"),
            ("DELETE", "/cache", 404, "the cache plugin is not enabled"),
            ("GET", "/no-such-endpoint", 404, "no admin endpoint at this path"),
            ("GET", "/reload", 405, None)]:
        reply = await admin.call(method, path)
        assert reply.status == code, (path, reply.text)
        assert reply.headers["Content-Type"] == PROBLEM
        doc = problem(reply.text)
        assert detail is None or doc["detail"] == detail

    assert (await admin.call("GET", "/healthz", token=False)).status == 200
    assert (await admin.call("GET", "/ready", token=False)).json()["ready"] is True
    assert await gw.terminate() == 0
    assert "Traceback" not in gw.stderr()


async def test_metrics_come_from_the_prometheus_plugin(gateway_process: GatewayFactory,
                                                       upstream: UpstreamFactory,
                                                       http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())
    gw = await gateway_process(f"""
[plugins.prometheus]

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""" + admin_section(admin.port))
    await admin.wait()
    assert (await get(http, gw.url + "/api/x"))[0] == 200
    reply = await admin.call("GET", "/metrics")
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert "pygate_" in reply.text
    assert (await admin.call("GET", "/metrics", token=False)).status == 401


# ---------------------------------------------------------------------------
# The token and the open endpoints
# ---------------------------------------------------------------------------


async def test_the_token_is_required_except_for_probes_and_the_dashboard(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())
    await gateway_process(f'[[routes]]\nname = "api"\npath = "/api"\nupstream = "{up.url}"\n'
                          + admin_section(admin.port))
    await admin.wait()
    for path, method in [("/status", "GET"), ("/routes", "GET"), ("/upstreams", "GET"),
                         ("/plugins", "GET"), ("/metrics", "GET"), ("/stats", "GET"),
                         ("/reload", "POST"), ("/cache", "DELETE"), ("/nothing", "GET")]:
        for token in (False, "wrong-token", TOKEN[:-1], TOKEN + "x"):
            reply = await admin.call(method, path, token=token)
            assert reply.status == 401, (path, token, reply.text)
            assert reply.headers["Content-Type"] == PROBLEM
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Bearer TOKEN" in problem(reply.text)["detail"]
    basic = await admin.call("GET", "/status", token=False,
                             headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401
    lower = await admin.call("GET", "/status", token=False,
                             headers={"Authorization": f"bearer {TOKEN}"})
    assert lower.status == 200  # the scheme is case-insensitive (RFC 9110)
    assert (await admin.call("GET", "/status")).status == 200

    assert (await admin.call("GET", "/ready", token=False)).status == 200
    assert (await admin.call("GET", "/healthz", token=False)).status == 200
    page = await admin.call("GET", "/", token=False)
    if (STATIC_DIR / "index.html").is_file():
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    else:
        assert page.status == 404 and "not installed" in problem(page.text)["detail"]
    for name in sorted(p.name for p in STATIC_DIR.glob("*") if p.is_file()):
        reply = await admin.call("GET", f"/static/{name}", token=False)
        assert reply.status == 200, name
    missing = await admin.call("GET", "/static/no-such-file.js", token=False)
    assert missing.status == 404 and missing.headers["Content-Type"] == PROBLEM
    # nothing outside the dashboard's folder, however the path is spelled
    for target in ("/static/../admin/app.py", "/static/..%2fadmin%2fapp.py",
                   "/static/%2e%2e/%2e%2e/pygate/admin/app.py"):
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        assert data.split(b" ", 2)[1] in (b"400", b"401", b"404"), (target, data[:200])
        assert b"token_matches" not in data


async def test_an_admin_address_in_use_fails_serve_before_it_serves(
        tmp_path: Path, upstream: UpstreamFactory) -> None:
    up = await upstream()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in (1, 2):
            gw = await launch_gateway(
                tmp_path / f"busy-{workers}.toml",
                f'[gateway]\nworkers = {workers}\n[[routes]]\nname = "api"\npath = "/api"\n'
                f'upstream = "{up.url}"\n' + admin_section(port),
                tmp_path / f"busy-{workers}.stderr")
            assert await gw.exit_code(within=15.0) == 1
            stderr = gw.stderr()
            assert f"cannot listen on 127.0.0.1:{port} (admin.listen)" in stderr, stderr
            assert "Traceback" not in stderr


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import pygate.admin.app as admin_app

    calls: list[tuple[bytes, bytes]] = []
    real = admin_app.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin_app.hmac, "compare_digest", spy)
    assert token_matches("Bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret")
    assert not token_matches("Basic s3cret", "s3cret")  # compared all the same
    assert not token_matches(None, "s3cret")
    assert not token_matches("Bearer s3cr\udcffet", "s3cret")  # undecodable bytes
    assert calls[:2] == [(b"s3cret", b"s3cret"), (b"s3cre", b"s3cret")]
    assert len(calls) == 5


async def test_without_a_token_on_loopback_every_endpoint_is_open(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port(), token=None)
    await gateway_process(f'[[routes]]\nname = "api"\npath = "/api"\nupstream = "{up.url}"\n'
                          + admin_section(admin.port, token=None))
    await admin.wait()
    assert (await admin.call("GET", "/status", token=False)).status == 200
    assert (await admin.call("GET", "/stats", token=False)).status == 200


# ---------------------------------------------------------------------------
# Probes: /ready and /healthz
# ---------------------------------------------------------------------------


async def test_ready_is_503_during_the_drain_and_healthz_stays_200(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.wait_for(release.wait(), 20.0)
        return web.Response(text="finished")

    up = await upstream(slow)
    admin = Admin(http, free_port())
    gw = await gateway_process(f"""
[gateway]
drain_timeout = "15s"

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""" + admin_section(admin.port))
    await admin.wait()
    ready = await admin.call("GET", "/ready", token=False)
    assert ready.status == 200 and ready.json() == {"ready": True, "generation": 1}

    in_flight = asyncio.get_running_loop().create_task(get(http, gw.url + "/api/slow"))
    await asyncio.wait_for(arrived.wait(), 5.0)
    gw.proc.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return (await admin.call("GET", "/ready", token=False)).status == 503

    await eventually(draining, what="/ready answers 503")
    reply = await admin.call("GET", "/ready", token=False)
    assert reply.headers["Content-Type"] == PROBLEM
    assert problem(reply.text)["detail"] == "draining"
    assert (await admin.call("GET", "/healthz", token=False)).status == 200
    status = await admin.get("/status")
    assert status["draining"] is True and status["ready"] is False

    release.set()
    assert (await in_flight)[0] == 200
    assert await gw.exit_code(within=15.0) == 0


async def test_ready_is_503_until_the_first_configuration_serves() -> None:
    """The admin listener opens before the gateway's plugins start: /ready says 503."""
    admin_port = free_port()
    config = load_data({"gateway": {"listen": "127.0.0.1:0"},
                        "admin": {"listen": f"127.0.0.1:{admin_port}"},
                        "routes": [{"name": "r", "path": "/", "upstream": "http://127.0.0.1:9"}]})
    gateway = build_gateway(config)
    socks = bind("127.0.0.1", admin_port, reuse_port=False)
    admin = await AdminServer.open(socks, None, gateway)
    url = f"http://127.0.0.1:{admin_port}"
    try:
        async with aiohttp.ClientSession() as http:
            status, headers, text = await get(http, url + "/ready")
            assert status == 503 and headers["Content-Type"] == PROBLEM
            assert problem(text)["detail"].startswith("starting")
            assert (await get(http, url + "/healthz"))[0] == 200
            assert (await get(http, url + "/routes"))[0] == 503

            running = await start(gateway, "127.0.0.1", 0)
            admin.attach(running, Reloader(running, None))
            try:
                assert (await get(http, url + "/ready"))[0] == 200
                assert (await get(http, url + "/routes"))[0] == 200
            finally:
                await running.stop()
    finally:
        await admin.close()


# ---------------------------------------------------------------------------
# Cache purge: memory, and Redis shared by two gateways
# ---------------------------------------------------------------------------


def cache_config(up_url: str, admin_port: int, backend: str = "memory",
                 workers: int = 1) -> str:
    return f"""
[gateway]
workers = {workers}

[plugins.cache]
ttl = "60s"
backend = "{backend}"

[[routes]]
name = "api"
path = "/api"
upstream = "{up_url}"

[[routes]]
name = "other"
path = "/other"
upstream = "{up_url}"

[[routes]]
name = "uncached"
path = "/uncached"
upstream = "{up_url}"
plugins = {{ cache = false }}
""" + admin_section(admin_port)


async def x_cache(http: aiohttp.ClientSession, url: str) -> str:
    status, headers, _ = await get(http, url)
    assert status == 200
    return str(headers.get("X-Cache"))


async def test_cache_purge_on_memory(gateway_process: GatewayFactory,
                                     upstream: UpstreamFactory,
                                     http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())
    gw = await gateway_process(cache_config(up.url, admin.port))
    await admin.wait()
    paths = ["/api/x", "/api/x/1", "/api/x/1?q=2", "/api/xy", "/other/x"]
    for path in paths:
        assert await x_cache(http, gw.url + path) == "MISS"
        assert await x_cache(http, gw.url + path) == "HIT"

    reply = await admin.call("DELETE", "/cache?prefix=/api/x")
    assert reply.status == 200, reply.text
    assert reply.json()["removed"] == 3  # /api/x and below, every query; not /api/xy
    assert await x_cache(http, gw.url + "/api/x") == "MISS"
    assert await x_cache(http, gw.url + "/api/x/1?q=2") == "MISS"
    assert await x_cache(http, gw.url + "/api/xy") == "HIT"
    assert await x_cache(http, gw.url + "/other/x") == "HIT"

    assert (await admin.call("DELETE", "/cache?route=other")).json()["removed"] == 1
    assert await x_cache(http, gw.url + "/other/x") == "MISS"
    # everything: /api/x, /api/x/1?q=2, /api/xy, /other/x
    assert (await admin.call("DELETE", "/cache")).json()["removed"] == 4
    assert await x_cache(http, gw.url + "/api/xy") == "MISS"

    bad = await admin.call("DELETE", "/cache?prefix=api")
    assert bad.status == 400 and "starting with '/'" in problem(bad.text)["detail"]
    unknown = await admin.call("DELETE", "/cache?route=uncached")
    assert unknown.status == 404
    assert (await admin.call("DELETE", "/cache", token=False)).status == 401


async def test_cache_purge_on_redis_purges_every_gateway_sharing_it(
        tmp_path: Path, upstream: UpstreamFactory, http: aiohttp.ClientSession,
        redis_server: RedisServer) -> None:
    up = await upstream()
    gateways = []
    admins = []
    try:
        for index in range(2):
            admin = Admin(http, free_port())
            gw = await launch_gateway(tmp_path / f"g{index}.toml",
                                      cache_config(up.url, admin.port, redis_server.url),
                                      tmp_path / f"g{index}.stderr")
            gateways.append(gw)
            admins.append(admin)
            await admin.wait()
        first, second = gateways
        assert await x_cache(http, first.url + "/api/a") == "MISS"
        assert await x_cache(http, first.url + "/api/b") == "MISS"
        assert await x_cache(http, second.url + "/api/a") == "HIT"  # shared through Redis

        reply = await admins[1].call("DELETE", "/cache?prefix=/api/a")
        assert reply.status == 200, reply.text
        assert reply.json()["removed"] == 1
        assert await x_cache(http, first.url + "/api/a") == "MISS"  # gone for both
        assert await x_cache(http, second.url + "/api/b") == "HIT"
        assert (await admins[0].call("DELETE", "/cache")).json()["removed"] == 2

        await asyncio.to_thread(redis_server.stop)
        down = await admins[0].call("DELETE", "/cache")
        assert down.status == 503 and down.headers["Content-Type"] == PROBLEM
    finally:
        for gw in gateways:
            await gw.terminate()
    for gw in gateways:
        assert "Traceback" not in gw.stderr()


# ---------------------------------------------------------------------------
# --workers 2: one admin listener for both workers
# ---------------------------------------------------------------------------


async def test_one_admin_listener_speaks_for_two_workers(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    up = await upstream()
    admin = Admin(http, free_port())
    gw = await gateway_process(cache_config(up.url, admin.port, workers=2))
    workers = await workers_ready(gw, 2)
    await admin.wait()

    status = await admin.get("/status")
    assert status["workers"] == 2 and status["pid"] == gw.pid and status["generation"] == 1
    assert {p["pid"] for p in status["processes"]} == workers
    assert sorted(p["worker"] for p in status["processes"]) == [1, 2]
    assert all(p["generation"] == 1 and p["ready"] for p in status["processes"])

    # Requests on a connection to each worker: the stats add both workers' counts.
    connections = await one_per_worker(gw.port, workers)
    sent = 0
    for count, conn in zip((3, 2), connections.values(), strict=True):
        for n in range(count):
            assert (await conn.get(f"/api/w{conn.worker}-{n}"))[0] == 200
            sent += 1

    async def counted() -> Any:
        stats = await admin.get("/stats")
        api = stats["routes"].get("api", {"requests": 0})
        return stats if api["requests"] == sent else None

    stats = await eventually(counted, what="both workers' requests are counted")
    assert stats["workers"] == 2 and stats["missing"] == []
    assert sum(stats["routes"]["api"]["latency"]) == sent
    assert stats["epoch"].count(":") == 2

    [target] = (await admin.get("/upstreams"))["upstreams"][0]["targets"]
    assert sorted(w["worker"] for w in target["workers"]) == [1, 2]
    assert target["healthy"] is True and target["active"] == 0

    # Each worker cached its own copy of /api/same (memory): the purge reaches both.
    for conn in connections.values():
        for _ in range(2):
            assert (await conn.get("/api/same"))[0] == 200
    purged = await admin.call("DELETE", "/cache?prefix=/api/same")
    assert purged.json() == {"removed": 2, "workers": 2, "missing": []}

    # Reload through the API: answered once both workers serve it.
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace('name = "other"\npath = "/other"',
                                           'name = "other"\npath = "/renamed"'))
    reply = await admin.reload()
    assert reply.status == 200, reply.text
    assert reply.json() == {"generation": 2}
    for conn in connections.values():
        assert (await conn.get("/renamed/x"))[0] == 200  # at once, on every worker
        assert (await conn.get("/other/x"))[0] == 404
    status = await admin.get("/status")
    assert status["generation"] == 2
    assert {p["generation"] for p in status["processes"]} == {2}

    # An invalid file: refused with its errors; both workers keep generation 2.
    gw.config_path.write_text(text.replace('name = "api"', 'name = "api"\nstrip_pth = true'))
    refused = await admin.reload()
    assert refused.status == 400 and refused.headers["Content-Type"] == PROBLEM
    errors = problem(refused.text)["errors"]
    assert errors[0]["path"] == "routes[0].strip_pth" and "strip_path" in errors[0]["message"]
    assert {p["generation"] for p in (await admin.get("/status"))["processes"]} == {2}
    for conn in connections.values():
        assert (await conn.get("/renamed/y"))[0] == 200
        conn.close()

    # Worker 1 serves the listener; its replacement serves it again.
    first = next(p["pid"] for p in status["processes"] if p["worker"] == 1)
    os.kill(first, signal.SIGKILL)

    async def replaced() -> Any:
        try:
            found = await admin.get("/status")
        except (aiohttp.ClientError, AssertionError):
            return None
        pids = {p.get("pid") for p in found["processes"]}
        return found if first not in pids and len(pids & children(gw.pid)) == 2 else None

    again = await eventually(replaced, within=15.0, what="a new worker 1 serves the admin")
    assert again["generation"] == 2
    assert {p["generation"] for p in again["processes"]} == {2}

    # The control sockets' private directory goes with the supervisor.
    [run_dir] = run_dirs_of(gw.pid)
    assert sorted(os.listdir(run_dir)) == ["supervisor.json", "worker-1.sock", "worker-2.sock"]
    assert await gw.terminate() == 0
    assert not exists(run_dir)
    assert "Traceback" not in gw.stderr()


def run_dirs_of(supervisor: int) -> list[str]:
    """The private directories whose supervisor.json names this supervisor."""
    import glob
    import json
    import tempfile

    found = []
    for base in {os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), "/tmp"}:
        for state in glob.glob(os.path.join(base, "pygate-*", "supervisor.json")):
            try:
                with open(state) as file:
                    if json.load(file).get("pid") == supervisor:
                        found.append(os.path.dirname(state))
            except (OSError, ValueError):
                continue
    return found


def test_the_private_directory_is_private() -> None:
    from pygate.admin.control import make_run_dir, read_state, socket_path, write_state

    run_dir = make_run_dir()
    try:
        assert oct(os.stat(run_dir).st_mode & 0o777) == "0o700"
        assert len(socket_path(run_dir, 12)) < 100
        write_state(run_dir, {"generation": 3})
        assert read_state(run_dir) == {"generation": 3}
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(socket_path(run_dir, 1))
        sock.close()
    finally:
        import shutil

        shutil.rmtree(run_dir)


async def test_metrics_add_up_both_workers(gateway_process: GatewayFactory,
                                           upstream: UpstreamFactory,
                                           http: aiohttp.ClientSession) -> None:
    """With the prometheus plugin, the supervisor gives the workers one directory for
    prometheus-client's multiprocess mode (and removes it at exit): /metrics, answered
    by worker 1, counts both workers' requests."""
    up = await upstream()
    admin = Admin(http, free_port())
    gw = await gateway_process(f"""
[gateway]
workers = 2

[plugins.prometheus]

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""" + admin_section(admin.port))
    workers = await workers_ready(gw, 2)
    await admin.wait()
    sent = 0
    for count, conn in zip((3, 4), (await one_per_worker(gw.port, workers)).values(),
                           strict=True):
        for _ in range(count):
            assert (await conn.get("/api/x"))[0] == 200
            sent += 1
        conn.close()

    async def counted() -> bool:
        text = (await admin.call("GET", "/metrics")).text
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("pygate_requests_total{") and 'route="api"' in line)
        return total == sent

    await eventually(counted, what="both workers' requests in /metrics")
    [directory] = metrics_directories(workers)  # one, shared by both
    assert await gw.terminate() == 0
    assert not metrics_directories(workers) and not exists(directory)


def metrics_directories(workers: set[int]) -> set[str]:
    """The multiprocess directories holding files of these worker pids."""
    return {str(path.parent) for base in ("/dev/shm", tempfile.gettempdir())
            for path in Path(base).glob("pygate-metrics-*/*.db")
            if any(path.name.endswith(f"_{pid}.db") for pid in workers)}


def exists(path: str) -> bool:
    return os.path.exists(path)
