"""Shared fixtures for the end-to-end tests.

``gateway_process`` runs ``python -m pygate serve`` as a real subprocess on a
free loopback port; ``upstream`` and ``raw_upstream`` start loopback services
in the test's own event loop. Everything a test talks to goes over real
sockets, so these tests see what a client or an upstream would see.

Anything that waits is ``async``: the upstreams live in the test's event loop,
so a blocking call in a test would freeze them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from pygate import hookimpl
from pygate.demo import make_app

# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port that nothing listens on (at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------
# The gateway as a subprocess
# ---------------------------------------------------------------------------


@dataclass
class GatewayProcess:
    """A ``pygate serve`` subprocess and what it was started with."""

    proc: asyncio.subprocess.Process
    port: int
    config_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        events = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    def rss_kb(self) -> int:
        """Resident set size of the gateway process, in KiB (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line in /proc status")

    async def exit_code(self, within: float) -> int | None:
        """The exit code, or None if the process still runs after ``within`` seconds."""
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            return None

    async def terminate(self, within: float = 15.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL after ``within`` seconds)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await self.exit_code(within)
        if code is None:
            self.proc.kill()
            code = await self.proc.wait()
        return code


def serve_command(config_path: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pygate", "serve", "-c", str(config_path),
            "--listen", f"127.0.0.1:{port}", "--log-level", "info", *extra]


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def accepts_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


GatewayFactory = Callable[..., Awaitable[GatewayProcess]]


async def launch_gateway(config_path: Path, config: str, stderr_path: Path,
                         *extra: str) -> GatewayProcess:
    """Write ``config`` and start ``pygate serve`` on a free port (``extra`` arguments after)."""
    await asyncio.to_thread(config_path.write_text, config)
    port = free_port()
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *serve_command(config_path, port, *extra), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr, env=subprocess_env(),
            cwd=config_path.parent)
    return GatewayProcess(proc, port, config_path, stderr_path)


@pytest.fixture
async def gateway_process(tmp_path: Path, upstream: Any, raw_upstream: Any
                          ) -> AsyncIterator[GatewayFactory]:
    """Factory: ``gw = await gateway_process(toml_text)`` starts ``pygate serve``.

    The TOML goes to ``tmp_path/pygate.toml``; the gateway listens on a free
    loopback port; the factory returns once the port accepts connections and
    fails with the process's stderr if it exits first. Teardown sends SIGTERM
    and waits. (It depends on the upstream fixtures only so that gateways stop
    before the upstreams they talk to.)
    """
    started: list[GatewayProcess] = []

    async def factory(config: str, *, startup: float = 15.0) -> GatewayProcess:
        index = len(started)
        gateway = await launch_gateway(
            tmp_path / ("pygate.toml" if index == 0 else f"pygate-{index}.toml"), config,
            tmp_path / f"gateway-{index}.stderr")
        started.append(gateway)
        proc, port = gateway.proc, gateway.port
        deadline = time.monotonic() + startup
        while not await accepts_connections(port):
            if proc.returncode is not None:
                pytest.fail(f"pygate serve exited with {proc.returncode} before listening:\n"
                            f"{gateway.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"pygate serve did not listen within {startup}s:\n"
                            f"{gateway.stderr()}")
            await asyncio.sleep(0.02)
        return gateway

    yield factory
    for gateway in started:
        await gateway.terminate()


ServeFactory = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def serve(tmp_path: Path, upstream: Any) -> AsyncIterator[ServeFactory]:
    """Like ``gateway_process`` but with extra command-line arguments (``--workers 2``,
    ``--watch``), and without waiting for the port: ``await serve(toml, *extra)``."""
    started: list[GatewayProcess] = []

    async def factory(text: str, *extra: str) -> GatewayProcess:
        index = len(started)
        gateway = await launch_gateway(tmp_path / f"serve-{index}.toml", text,
                                       tmp_path / f"serve-{index}.stderr", *extra)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        await gateway.terminate()


# ---------------------------------------------------------------------------
# Upstreams
# ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request an upstream received (the body is counted, never stored)."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body_size: int | None = None


@dataclass
class Upstream:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)

    @property
    def last(self) -> Seen:
        assert self.seen, "the upstream received no request"
        return self.seen[-1]


SEEN = web.AppKey("seen", list[Seen])
SEEN_REQUEST = web.RequestKey("seen", Seen)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def count_body(request: web.Request) -> int:
    """Read the request body to its end, counting bytes; record the count."""
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    seen = request.get(SEEN_REQUEST)
    if seen is not None:
        seen.body_size = total
    return total


async def echo(request: web.Request) -> web.StreamResponse:
    """What the upstream received: method, path (raw, with query), headers, body size."""
    size = await count_body(request)
    return web.json_response({
        "method": request.method,
        "path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_size": size,
    })


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    seen = Seen(request.method, request.raw_path, CIMultiDictProxy(CIMultiDict(request.headers)))
    request[SEEN_REQUEST] = seen
    request.app[SEEN].append(seen)
    return await handler(request)


UpstreamFactory = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamFactory]:
    """Factory: ``up = await upstream(handler=echo, routes=None)``, a loopback aiohttp app.

    ``routes`` maps ``"METHOD /path"`` to handlers; otherwise ``handler``
    answers every path. Each request is recorded in ``up.seen`` (method, raw
    path, headers, and the body size when the handler counted it).
    """
    runners: list[web.AppRunner] = []

    async def factory(handler: Handler | None = None,
                      routes: Mapping[str, Handler] | None = None) -> Upstream:
        app = web.Application(middlewares=[_record])
        seen: list[Seen] = []
        app[SEEN] = seen
        if routes:
            for key, route_handler in routes.items():
                method, _, path = key.partition(" ")
                app.router.add_route(method, path, route_handler)
        else:
            app.router.add_route("*", "/{tail:.*}", handler or echo)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = int(runner.addresses[0][1])
        return Upstream(url=f"http://127.0.0.1:{port}", port=port, seen=seen)

    yield factory
    for runner in runners:
        await runner.cleanup()


@dataclass
class RawUpstream:
    """A loopback TCP server speaking whatever its callback writes."""

    url: str
    port: int
    server: asyncio.Server
    connections: int = 0


RawCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def answer_with_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw upstream callback: read the request head, then reset (RST, not FIN)."""
    await reader.readuntil(b"\r\n\r\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answer_not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw upstream callback: read the request head, then answer bytes that are not HTTP."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"this is not HTTP at all\r\n\r\n")
    await writer.drain()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[RawCallback], Awaitable[RawUpstream]]]:
    """Factory: ``up = await raw_upstream(callback)`` for upstreams that misbehave."""
    servers: list[asyncio.Server] = []
    writers: set[asyncio.StreamWriter] = set()

    async def factory(callback: RawCallback) -> RawUpstream:
        holder: list[RawUpstream] = []

        async def on_connection(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
            holder[0].connections += 1
            writers.add(writer)
            try:
                await callback(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                writers.discard(writer)

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        servers.append(server)
        port = int(server.sockets[0].getsockname()[1])
        holder.append(RawUpstream(f"http://127.0.0.1:{port}", port, server))
        return holder[0]

    yield factory
    for writer in list(writers):
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------
# Raw client sockets
# ---------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawExchange:
    """Everything the server wrote on one connection, and whether it closed it."""

    data: bytes
    closed: bool

    @property
    def responses(self) -> list[RawResponse]:
        return parse_responses(self.data)


def parse_responses(data: bytes) -> list[RawResponse]:
    """Split raw HTTP/1.1 bytes into responses (Content-Length or chunked bodies)."""
    out = []
    rest = data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response head: {head!r}")
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = [*lines[0].split(" ", 2), ""][:3]
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        if headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body += rest[:size]
                rest = rest[size + 2:]
        else:
            length = int(headers.get("Content-Length", "0"))
            body, rest = rest[:length], rest[length:]
        out.append(RawResponse(int(status), reason, headers, body))
    return out


async def raw_exchange(port: int, *parts: bytes, read_for: float = 3.0,
                       pause: float = 0.0) -> RawExchange:
    """Write ``parts`` on one connection, then read until the server closes or ``read_for`` s.

    With ``pause``, wait that long after each part, so that the answer to one
    part is out before the next is written.

    ``closed`` tells whether the server closed the connection (read returned
    b"" or the connection was reset) rather than the time running out.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    closed = False
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        deadline = asyncio.get_running_loop().time() + read_for
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    finally:
        writer.close()
    return RawExchange(data, closed)


def problem(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse a problem document and check the members every one of them has."""
    doc = dict(body) if isinstance(body, Mapping) else json.loads(body)
    for key in ("type", "title", "status", "detail", "request_id"):
        assert key in doc, f"problem document without {key!r}: {doc}"
    assert doc["type"] == "about:blank"
    return doc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to gateways (no decompression, no cookies)."""
    session = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
    yield session
    await session.close()


class Recorder:
    """An in-test plugin that keeps the access-log records the ``log`` hook gets."""

    PRIORITY = 1

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.logged = asyncio.Event()

    @hookimpl
    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.logged.set()


# ---------------------------------------------------------------------------
# The shipped configurations (pygate.toml, examples/) against the demo services

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root folder."""


@pytest.fixture
async def demo_services() -> AsyncIterator[dict[str, int]]:
    """The users, orders and products demo services on free loopback ports."""
    runners = []
    ports: dict[str, int] = {}
    for name in ("users", "orders", "products"):
        runner = web.AppRunner(make_app(name), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports[name] = int(runner.addresses[0][1])
    yield ports
    for runner in runners:
        await runner.cleanup()


def shipped_config(path: Path, ports: Mapping[str, int]) -> dict[str, Any]:
    text = path.read_text()
    for name, default in (("users", 3001), ("orders", 3002), ("products", 3003)):
        text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    data = tomllib.loads(text)
    data.pop("gateway", None)
    return data
