"""The gateway's listener: bursts of connections on a busy loop, and running out of descriptors.

Under uvloop the loop's own server accepts one pending connection per loop
iteration, so a busy gateway took about a second to accept 200 connections
that arrived together, and their first requests waited that long. pygate's
listener accepts everything pending at once; these tests hold it to that on
uvloop and on asyncio's own loop, and check that a gateway out of file
descriptors keeps serving once some are free again.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web

from pygate.listener import AcceptSite, bind
from pygate.testing import free_port, spawn_serve, stop_serve, wait_listening

BURST = 100


async def _accept_burst() -> int:
    """Loop iterations a busy loop needs to accept ``BURST`` connections that arrive together."""
    loop = asyncio.get_running_loop()

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="hello")

    server = web.Server(hello)
    runner = web.ServerRunner(server)
    await runner.setup()
    sock = bind("127.0.0.1", 0, reuse_port=False)[0]
    port = sock.getsockname()[1]
    site = AcceptSite(runner, sock)
    await site.start()
    iterations = 0
    busy = True

    def work() -> None:  # every loop iteration costs 2 ms, as under load
        nonlocal iterations
        iterations += 1
        until = time.perf_counter() + 0.002
        while time.perf_counter() < until:
            pass
        if busy:
            loop.call_soon(work)

    clients: list[socket.socket] = []
    try:
        loop.call_soon(work)
        await asyncio.sleep(0.01)
        for _ in range(BURST):
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(("127.0.0.1", port))
            clients.append(client)
        start = iterations
        deadline = time.monotonic() + 10
        # polled: aiohttp's server signals no new connection
        while len(server.connections) < BURST and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)
        assert len(server.connections) == BURST
        return iterations - start
    finally:
        busy = False
        for client in clients:
            client.close()
        await runner.cleanup()


@pytest.mark.parametrize("new_loop", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_a_burst_of_connections_is_accepted_at_once_on_a_busy_loop(
        new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = new_loop()
    try:
        iterations = loop.run_until_complete(_accept_burst())
    finally:
        loop.close()
    # Accepting one connection per iteration would take BURST iterations.
    assert iterations <= 10


def test_the_listener_frees_its_port_when_stopped() -> None:
    async def scenario() -> int:
        runner = web.ServerRunner(web.Server(lambda request: web.Response()))
        await runner.setup()
        sock = bind("127.0.0.1", 0, reuse_port=False)[0]
        port = int(sock.getsockname()[1])
        await AcceptSite(runner, sock).start()
        await runner.cleanup()
        return port

    port = asyncio.run(scenario())
    with socket.socket() as probe:  # nobody listens, nothing half-closed holds it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_port_in_use_is_refused_without_reuse_port() -> None:
    taken = bind("127.0.0.1", 0, reuse_port=False)[0]
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", taken.getsockname()[1], reuse_port=False)
    finally:
        taken.close()


# ---------------------------------------------------------------------------
# Out of file descriptors


@contextlib.contextmanager
def _held_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield held
    finally:
        for conn in held:
            conn.close()


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _low_soft_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, HARD_LIMIT))


def _open_files_limits(pid: int) -> tuple[int, int]:
    """The soft and hard ``Max open files`` of a running process."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open files limit")


FD_LIMIT = 64
HARD_LIMIT = 4096


def _api_config(tmp_path: Path, upstream_url: str) -> Path:
    config = tmp_path / "pygate.toml"
    config.write_text(f"""
[upstreams.api]
targets = ["{upstream_url}"]

[[routes]]
name = "api"
path = "/api"
upstream = "api"
""")
    return config


async def test_serve_raises_a_low_open_files_limit_to_the_hard_limit(
        tmp_path: Path, fake_upstream: Callable[..., object]) -> None:
    """A soft limit of 64 (below the connections a gateway holds) is raised at start-up."""
    upstream = await fake_upstream()  # type: ignore[misc]
    config = _api_config(tmp_path, upstream.url)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn_serve(config, port, log, preexec_fn=_low_soft_limit)
    try:
        await asyncio.to_thread(wait_listening, proc, port, log)
        assert _open_files_limits(proc.pid) == (HARD_LIMIT, HARD_LIMIT)
        with _held_connections(port, FD_LIMIT * 3):
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.get(f"http://127.0.0.1:{port}/api/ok") as response:
                    assert response.status == 200
        assert "cannot accept connections" not in log.read_text()
    finally:
        assert stop_serve(proc) == 0


async def test_a_gateway_out_of_descriptors_serves_again_once_some_are_free(
        tmp_path: Path, fake_upstream: Callable[..., object]) -> None:
    upstream = await fake_upstream()  # type: ignore[misc]
    config = _api_config(tmp_path, upstream.url)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn_serve(config, port, log, preexec_fn=_limit_descriptors)
    try:
        await asyncio.to_thread(wait_listening, proc, port, log)
        url = f"http://127.0.0.1:{port}/api/ok"
        # More connections than the process has descriptors left: the kernel
        # queues the rest, the gateway cannot accept them and says so.
        with _held_connections(port, FD_LIMIT + 20):
            for _ in range(50):
                if "cannot accept connections" in log.read_text():
                    break
                await asyncio.sleep(0.1)
            assert "cannot accept connections" in log.read_text()
        # Descriptors are free again: the gateway serves as before.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url) as response:
                assert response.status == 200
                assert (await response.json())["path"] == "/ok"
        assert proc.poll() is None
    finally:
        assert stop_serve(proc) == 0
    assert "Traceback" not in log.read_text()
