"""Several nodes as one gateway: two `pygate serve` nodes behind a real nginx, one real Redis.

The rate limit and the cache keep their state in Redis, so the nodes answer as one
gateway: a limit of N admits N requests in all, a response cached through one node is a
hit through the other, a purge through one node's admin API empties it for both, and a
rolling restart (one node drained and restarted, then the other) under continuous load
through nginx loses no request (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pygate.testing import RedisServer

from .conftest import Upstream, UpstreamFactory, accepts_connections, free_port, serve_command
from .conftest import subprocess_env as base_env

TOKEN = "cluster-t0ken"
LIMIT = 10


def nginx_executable() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
        None)
    if found is None:
        message = "nginx is not installed (make test installs the Debian package)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Node:
    """One `pygate serve` node on fixed ports (so a restart comes back where it was)."""

    name: str
    port: int
    admin_port: int
    config: Path
    log: Path  # stderr: lifecycle lines
    access: Path  # stdout: the logging plugin's access lines
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self) -> None:
        with self.log.open("ab") as err, self.access.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *serve_command(self.config, self.port), stdout=out, stderr=err,
                env=base_env(), cwd=self.config.parent)
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.returncode is None, self.log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.admin + "/ready") as response:
                        if response.status == 200:
                            return
                assert time.monotonic() < deadline, f"{self.name} not ready:\n" + \
                    self.log.read_text()
                await asyncio.sleep(0.05)

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        self.proc = None
        return code

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.access.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


def node_config(node: Node, upstream: Upstream, redis: RedisServer) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:{node.port}"
drain_timeout = "5s"

[admin]
listen = "127.0.0.1:{node.admin_port}"
token = "{TOKEN}"

[plugins.logging]
format = "json"

[[routes]]
name = "limited"
path = "/limited"
upstream = "{upstream.url}"
plugins = {{ rate-limit = {{ limit = {LIMIT}, window = "1m", backend = "{redis.url}" }} }}

[[routes]]
name = "cached"
path = "/cached"
upstream = "{upstream.url}"
plugins = {{ cache = {{ ttl = "1m", backend = "{redis.url}" }} }}

[[routes]]
name = "open"
path = "/open"
upstream = "{upstream.url}"
"""


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream pygate {{
        server 127.0.0.1:{a} max_fails=0;
        server 127.0.0.1:{b} max_fails=0;
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pygate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


@dataclass
class Cluster:
    a: Node
    b: Node
    nginx_url: str
    upstream: Upstream
    redis: RedisServer


@pytest.fixture
async def cluster(tmp_path: Path, upstream: UpstreamFactory, redis_server: RedisServer
                  ) -> AsyncIterator[Cluster]:
    nginx = nginx_executable()

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.json_response({"path": request.path, "at": time.monotonic()})

    up = await upstream(slowish)
    nodes = []
    for name in ("a", "b"):
        node = Node(name, free_port(), free_port(), tmp_path / f"{name}.toml",
                    tmp_path / f"{name}.log", tmp_path / f"{name}.access")
        node.config.write_text(node_config(node, up, redis_server))
        nodes.append(node)
    await asyncio.gather(*(node.start() for node in nodes))
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, a=nodes[0].port, b=nodes[1].port,
                                      port=port))
    proxy = await asyncio.create_subprocess_exec(
        nginx, "-p", str(tmp_path), "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not await accepts_connections(port):
            assert proxy.returncode is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            await asyncio.sleep(0.05)
        yield Cluster(nodes[0], nodes[1], f"http://127.0.0.1:{port}", up, redis_server)
    finally:
        proxy.terminate()
        await proxy.wait()
        for node in nodes:
            if node.proc is not None:
                await node.stop()


async def test_a_rate_limit_of_n_admits_exactly_n_requests_over_both_nodes(
        cluster: Cluster) -> None:
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3 * LIMIT):
            async with session.get(cluster.nginx_url + "/limited") as response:
                statuses.append(response.status)
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == 2 * LIMIT
    deadline = time.monotonic() + 5  # the access lines are written after the responses
    while sum(len(n.access_lines()) for n in (cluster.a, cluster.b)) < 3 * LIMIT:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    served = {node.name: [e["status"] for e in node.access_lines() if e["route"] == "limited"]
              for node in (cluster.a, cluster.b)}
    assert all(served.values()), served  # nginx spread the requests over both nodes
    assert sum(s.count(200) for s in served.values()) == LIMIT


async def test_cached_through_one_node_is_a_hit_through_the_other_until_purged(
        cluster: Cluster) -> None:
    def calls() -> int:
        return sum(1 for seen in cluster.upstream.seen if seen.path == "/item")

    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.a.url + "/cached/item") as response:
            assert (response.status, response.headers["X-Cache"]) == (200, "MISS")
            first = await response.json()
        async with session.get(cluster.b.url + "/cached/item") as response:
            assert (response.status, response.headers["X-Cache"]) == (200, "HIT")
            assert await response.json() == first
        assert calls() == 1
        # a purge through node a's admin API empties the shared store for b as well
        async with session.delete(cluster.a.admin + "/cache", params={"prefix": "/cached"},
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            assert (await response.json())["removed"] >= 1
        async with session.get(cluster.b.url + "/cached/item") as response:
            assert (response.status, response.headers["X-Cache"]) == (200, "MISS")
        assert calls() == 2


async def test_a_rolling_restart_under_load_through_nginx_loses_no_request(
        cluster: Cluster) -> None:
    results: list[int | str] = []
    stop = asyncio.Event()
    answered = asyncio.Event()  # set after every answer

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.get(cluster.nginx_url + "/open/x") as response:
                    await response.read()
                    results.append(response.status)
            except aiohttp.ClientError as exc:
                results.append(f"{type(exc).__name__}: {exc}")
            answered.set()

    async def more_answers(count: int) -> None:
        wanted = len(results) + count
        while len(results) < wanted:
            answered.clear()
            await answered.wait()

    async def restart(node: Node) -> None:
        await more_answers(20)  # load is flowing through the cluster
        assert await node.stop() == 0
        await node.start()

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(8)]
        try:
            await asyncio.wait_for(restart(cluster.a), 60)
            await asyncio.wait_for(restart(cluster.b), 60)
            await asyncio.wait_for(more_answers(50), 30)  # both back, serving
        finally:
            stop.set()
            await asyncio.gather(*clients)
    failures = [r for r in results if r != 200]
    assert not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    assert len(results) > 200
