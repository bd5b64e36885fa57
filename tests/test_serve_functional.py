"""``pygate serve`` as a process: refusing a broken configuration, and graceful drain.

PRODUCT.md section 2: ``serve`` validates the whole configuration before
binding any port, prints key paths and no traceback for configuration errors,
and on SIGTERM/SIGINT stops accepting, finishes in-flight requests up to
``gateway.drain_timeout``, then exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    GatewayFactory,
    UpstreamFactory,
    accepts_connections,
    free_port,
    raw_exchange,
    serve_command,
    subprocess_env,
)


async def run_serve(config_path: Path, port: int) -> tuple[int, str]:
    """Run ``pygate serve`` to its exit; ``(exit code, stderr)``."""
    proc = await asyncio.create_subprocess_exec(
        *serve_command(config_path, port), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=subprocess_env(),
        cwd=config_path.parent)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 15.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("pygate serve kept running with a broken configuration")
    assert proc.returncode is not None
    return proc.returncode, stderr.decode(errors="replace")


BROKEN = {
    "several errors": (
        """
[gateway]
timeout = "soon"
max_bdy = "1MB"

[upstreams.users]
targets = ["http://127.0.0.1:3001"]

[[routes]]
name = "users"
path = "/api/users"
upstream = "user"

[[routes]]
name = "orders"
path = "api/orders"
upstream = "http://127.0.0.1:3002"
""",
        ["gateway.timeout", "gateway.max_bdy", "max_body", "routes[0].upstream", "'users'",
         "routes[1].path"],
    ),
    "invalid toml": ("[gateway\nlisten = 1\n", ["invalid TOML"]),
    "unset variable": (
        """
[[routes]]
name = "api"
path = "/api"
upstream = "${PYGATE_TEST_SURELY_UNSET_UPSTREAM}"
""",
        ["routes[0].upstream", "PYGATE_TEST_SURELY_UNSET_UPSTREAM"],
    ),
}


async def test_broken_config_exits_1_with_key_paths_and_binds_nothing(tmp_path: Path) -> None:
    for name, (text, expected) in BROKEN.items():
        config_path = tmp_path / f"{name.replace(' ', '-')}.toml"
        config_path.write_text(text)
        port = free_port()
        code, stderr = await run_serve(config_path, port)
        assert code == 1, (name, stderr)
        for needle in expected:
            assert needle in stderr, f"{name}: {needle!r} missing from:\n{stderr}"
        assert str(config_path) in stderr, stderr
        assert "Traceback" not in stderr, stderr
        assert "listening" not in stderr, stderr
        assert not await accepts_connections(port)


async def test_port_in_use_exits_1_without_traceback(tmp_path: Path) -> None:
    config_path = tmp_path / "pygate.toml"
    config_path.write_text('[[routes]]\nname = "api"\npath = "/api"\n'
                           'upstream = "http://127.0.0.1:3001"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, stderr = await run_serve(config_path, int(taken.getsockname()[1]))
    assert code == 1, stderr
    assert "cannot listen on" in stderr
    assert "Traceback" not in stderr, stderr


async def test_sigterm_lets_the_in_flight_request_finish_and_refuses_new_connections(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(1.5)
        return web.Response(text="finished")

    up = await upstream(slow)
    gw = await gateway_process(f"""
[gateway]
drain_timeout = "5s"

[[routes]]
name = "slow"
path = "/slow"
upstream = "{up.url}"
""")

    async def client() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/slow") as response:
            return response.status, await response.text()

    in_flight = asyncio.get_running_loop().create_task(client())
    await asyncio.wait_for(arrived.wait(), 5.0)
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert gw.proc.returncode is None, "the gateway exited with a request in flight"
    assert not await accepts_connections(gw.port), "a new connection was accepted after SIGTERM"

    assert await asyncio.wait_for(in_flight, 5.0) == (200, "finished")
    code = await gw.exit_code(within=5.0)
    assert code == 0, gw.stderr()
    assert time.monotonic() - started < 4.0
    events = [e.get("event") for e in gw.log_events()]
    assert "draining" in events and "stopped" in events
    assert "Traceback" not in gw.stderr()


async def test_drain_gives_up_after_drain_timeout_and_still_exits_0(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.StreamResponse:
        arrived.set()
        try:
            await asyncio.wait_for(release.wait(), 15.0)
        except TimeoutError:
            pass
        return web.Response(text="too late")

    up = await upstream(stuck)
    gw = await gateway_process(f"""
[gateway]
drain_timeout = "1s"

[[routes]]
name = "stuck"
path = "/stuck"
upstream = "{up.url}"
""")

    request = b"GET /stuck HTTP/1.1\r\nHost: gw\r\n\r\n"
    in_flight = asyncio.get_running_loop().create_task(
        raw_exchange(gw.port, request, read_for=8.0))
    try:
        await asyncio.wait_for(arrived.wait(), 5.0)
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = await gw.exit_code(within=6.0)
        elapsed = time.monotonic() - started
        assert code == 0, gw.stderr()
        assert 0.9 <= elapsed < 1.8, f"exited {elapsed:.2f}s after SIGTERM with drain_timeout 1s"
        exchange = await asyncio.wait_for(in_flight, 5.0)
        # The request was cut: the connection closed without a 200.
        assert exchange.closed
        assert not exchange.data.startswith(b"HTTP/1.1 200"), exchange.data
    finally:
        release.set()
    assert "Traceback" not in gw.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_idle_keep_alive_connections_do_not_delay_shutdown(
        gateway_process: GatewayFactory, upstream: UpstreamFactory, signum: int) -> None:
    up = await upstream()
    gw = await gateway_process(f"""
[gateway]
drain_timeout = "10s"

[[routes]]
name = "api"
path = "/api"
upstream = "{up.url}"
""")
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/api/x") as response:
            assert response.status == 200
            await response.read()
        # The session keeps the connection open and idle.
        started = time.monotonic()
        gw.proc.send_signal(signum)
        code = await gw.exit_code(within=5.0)
        assert code == 0, gw.stderr()
        assert time.monotonic() - started < 2.0
    assert "Traceback" not in gw.stderr()
