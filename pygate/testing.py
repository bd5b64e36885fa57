"""Test helpers for pygate and its plugins: an in-process gateway and fake upstreams.

Opt in from a test suite with ``pytest_plugins = ["pygate.testing"]`` (pygate's
own suite loads it through ``-p pygate.testing``). Then a plugin test is a few
lines::

    async def test_adds_header(pygate_gateway, fake_upstream):
        upstream = await fake_upstream()
        gateway = await pygate_gateway(
            {"routes": [{"name": "r", "path": "/", "upstream": upstream.url,
                         "plugins": {"stamp": {}}}]},
            plugins={"stamp": my_plugin_module},
        )
        async with gateway.session.get(gateway.url + "/x") as response:
            assert response.status == 200
        assert upstream.requests[-1].headers["X-Stamp"] == "yes"

Plugin objects given in ``plugins`` are used instead of installed entry points
(autoload stays on for other names, so a configured installed plugin still
loads). The gateway is a real server on a free loopback port.

The test gateway listens without TLS. A request can still come with a client
certificate, as if the TLS listener had verified it (for plugins that read
``ctx.client_cert``, such as ``mtls``)::

    cert = ClientCert(subject="CN=payments-svc,O=Example", cn="payments-svc",
                      sans=(("DNS", "payments.internal"),), serial="1f",
                      not_after=time.time() + 86400)
    status, headers, body = await gateway.request("GET", "/x", client_cert=cert)

It is sent on a connection of its own, and the gateway sets ``ctx.client_cert``
for the requests of that connection only, as it does for a TLS connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from .app import build_gateway
from .config import load_data
from .context import ClientCert, Context
from .server import Running, start

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    """One request a fake upstream received."""

    method: str
    path: str
    query: str  # the raw query string, as sent
    headers: CIMultiDictProxy[str]  # every header line, repeated ones included
    body: bytes


@dataclass
class FakeUpstream:
    """A loopback aiohttp server that records what it receives."""

    url: str
    runner: web.AppRunner
    requests: list[Recorded] = field(default_factory=list)

    async def close(self) -> None:
        await self.runner.cleanup()


async def _echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({
        "method": request.method,
        "path": request.raw_path.partition("?")[0],
        "query": request.query_string,
        "headers": dict(request.headers),
    })


async def start_fake_upstream(handler: Handler | None = None,
                              routes: Mapping[str, Handler] | None = None) -> FakeUpstream:
    """Start a fake upstream; ``routes`` maps ``"METHOD /path"`` (or ``"/path"``) to handlers.

    Without handlers it echoes the request (method, path, query, headers) as JSON.
    Every request is recorded with its body in ``upstream.requests``.
    """
    recorded: list[Recorded] = []
    fallback = handler or _echo

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        recorded.append(Recorded(request.method, path, query, request.headers, body))
        return await handler(request)

    app = web.Application(middlewares=[record])
    if routes:
        for key, route_handler in routes.items():
            method, _, path = key.partition(" ") if " " in key else ("*", "", key)
            app.router.add_route(method, path, route_handler)
    else:
        app.router.add_route("*", "/{tail:.*}", fallback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream = FakeUpstream(url=f"http://127.0.0.1:{port}", runner=runner)
    upstream.requests = recorded
    return upstream


@dataclass
class TestGateway:
    """A running in-process gateway plus a client session pointed at it."""

    running: Running
    session: aiohttp.ClientSession
    # the client certificates of open test connections, by the client's (host, port)
    client_certs: dict[tuple[str, int], ClientCert] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.running.url

    async def request(self, method: str, path: str, *, client_cert: ClientCert | None = None,
                      **kwargs: Any) -> tuple[int, Any, Any]:
        """``(status, headers, body)``; the body is parsed JSON when it is JSON.

        :param client_cert: the request comes on a connection whose client presented
            this verified certificate (``ctx.client_cert``; see the module's docstring).
        """
        if client_cert is None:
            return await self._request(self.session, method, path, **kwargs)
        address = ("127.0.0.1", free_port())
        self.client_certs[address] = client_cert
        connector = aiohttp.TCPConnector(local_addr=address, force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector,
                                             auto_decompress=False) as session:
                return await self._request(session, method, path, **kwargs)
        finally:
            del self.client_certs[address]

    async def _request(self, session: aiohttp.ClientSession, method: str, path: str,
                       **kwargs: Any) -> tuple[int, Any, Any]:
        async with session.request(method, self.url + path, **kwargs) as response:
            raw = await response.read()
            body: Any = raw
            if "json" in response.headers.get("Content-Type", ""):
                body = json.loads(raw) if raw else None
            return response.status, response.headers, body

    async def close(self) -> None:
        await self.session.close()
        await self.running.stop()


async def start_gateway(config: Mapping[str, Any], plugins: Mapping[str, Any] | None = None,
                        *, base_dir: str = ".") -> TestGateway:
    """Validate ``config`` (a pygate.toml as a dict), start it on a free loopback port."""
    data = dict(config)
    gateway_section = dict(data.get("gateway", {}))
    gateway_section.setdefault("listen", "127.0.0.1:0")
    data["gateway"] = gateway_section
    model = load_data(data, source="<test config>", base_dir=base_dir)
    gateway = build_gateway(model, extra_plugins=plugins)
    running = await start(gateway, "127.0.0.1", 0)
    session = aiohttp.ClientSession(auto_decompress=False)
    test_gateway = TestGateway(running=running, session=session)
    _set_client_certs(running, test_gateway.client_certs)
    return test_gateway


def _set_client_certs(running: Running, certs: dict[tuple[str, int], ClientCert]) -> None:
    """Make the pipeline set ``ctx.client_cert`` for the requests of the connections in
    ``certs`` (by client address): what the TLS listener does for a verified client
    certificate, on a plain test listener."""
    pipeline = running.pipeline
    make_context = pipeline.context

    def context(request: web.BaseRequest, gw: Any) -> tuple[Context, tuple[str, bool]]:
        ctx, forwarded = make_context(request, gw)
        if certs:
            transport = request.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            cert = certs.get((peer[0], peer[1])) if peer else None
            if cert is not None:
                ctx.client_cert = cert
        return ctx, forwarded

    pipeline.context = context  # type: ignore[method-assign]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A real ``redis-server`` on a free loopback port, without persistence.

    ``stop()`` and ``start()`` (same port) let a test take Redis away and bring it back.
    """

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pygate-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_executable() -> str | None:
    """``redis-server``'s path; under ``CI=true`` a missing one fails instead of skipping."""
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (make test installs the Debian package)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, killed after the test."""
    executable = redis_executable()
    assert executable is not None
    server = RedisServer(executable)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def fake_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    """Factory fixture: ``upstream = await fake_upstream(handler=None, routes=None)``."""
    started: list[FakeUpstream] = []

    async def factory(handler: Handler | None = None,
                      routes: Mapping[str, Handler] | None = None) -> FakeUpstream:
        upstream = await start_fake_upstream(handler, routes)
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        await upstream.close()


@pytest.fixture
async def pygate_gateway() -> AsyncIterator[Callable[..., Awaitable[TestGateway]]]:
    """Factory fixture: ``gateway = await pygate_gateway(config_dict, plugins={name: obj})``."""
    started: list[TestGateway] = []

    async def factory(config: Mapping[str, Any], plugins: Mapping[str, Any] | None = None,
                      *, base_dir: str = ".") -> TestGateway:
        gateway = await start_gateway(config, plugins, base_dir=base_dir)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        await gateway.close()


# ---------------------------------------------------------------------------
# Real `pygate serve` processes (for tests across processes: shared Redis state)
# ---------------------------------------------------------------------------


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port`` now."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def spawn_serve(config: Path, port: int, log: Path, *args: str,
                preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start ``pygate serve -c CONFIG --listen 127.0.0.1:PORT`` with stderr to ``log``.

    ``PYGATE_*`` variables of the test environment are not passed on.
    ``preexec_fn`` runs in the child before ``pygate`` starts (e.g. to lower a limit).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "pygate", "serve", "-c", str(config),
             "--listen", f"127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            preexec_fn=preexec_fn)


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path,
                   timeout: float = 20.0) -> None:
    """Wait until the process listens; fail with its log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


async def serve_process(config: Path, port: int, log: Path,
                        *args: str) -> subprocess.Popen[bytes]:
    """:func:`spawn_serve`, then wait (off the event loop) until it listens."""
    proc = spawn_serve(config, port, log, *args)
    await asyncio.to_thread(wait_listening, proc, port, log)
    return proc


def stop_serve(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM (a graceful drain), then the exit code; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)
