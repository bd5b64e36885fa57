"""`make serve`'s runner (`python -m pygate.demo --gateway CONFIG`): the demo services and
the gateway start together and stop together, however the stop is asked for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from .conftest import accepts_connections, free_port, subprocess_env

SERVICES = ("users", "orders", "products")


def _config(path: Path, port: int, users: int) -> Path:
    path.write_text(f'[gateway]\nlisten = "127.0.0.1:{port}"\ndrain_timeout = "2s"\n\n'
                    f'[[routes]]\nname = "users"\npath = "/api/users"\n'
                    f'upstream = "http://127.0.0.1:{users}"\nrewrite = "/users"\n')
    return path


def _runner(config: Path, ports: dict[str, int], *extra: str, prefix: tuple[str, ...] = (),
            new_session: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "pygate.demo", "--gateway", str(config), *extra]
    for name in SERVICES:
        args += [f"--{name}-port", str(ports[name])]
    command = [*prefix, " ".join(args)] if prefix else args
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env(), start_new_session=new_session,
                            cwd=config.parent)


async def _wait_listening(port: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await accepts_connections(port):
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        await asyncio.sleep(0.1)


async def _wait_closed(ports: list[int], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while any([await accepts_connections(p) for p in ports]):
        assert time.monotonic() < deadline, "something still listens after the stop"
        await asyncio.sleep(0.1)


async def test_ctrl_c_to_the_process_group_stops_the_gateway_and_the_services(
        tmp_path: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    gateway_port = free_port()
    runner = _runner(_config(tmp_path / "pygate.toml", gateway_port, ports["users"]), ports,
                     new_session=True)
    try:
        await _wait_listening(gateway_port)
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{gateway_port}/api/users/1") as response:
            assert response.status == 200
            assert (await response.json())["id"] in (1, "1")
        os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert runner.wait(timeout=30) == 0
        await _wait_closed([gateway_port, *ports.values()])
        err = runner.stderr.read().decode() if runner.stderr else ""
        assert "Traceback" not in err, err
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)


async def test_killing_only_the_parent_stops_everything(tmp_path: Path) -> None:
    """`kill` of make's PID alone (here: a shell standing for make, killed outright)."""
    ports = {name: free_port() for name in SERVICES}
    gateway_port = free_port()
    config = _config(tmp_path / "pygate.toml", gateway_port, ports["users"])
    parent = _runner(config, ports, prefix=("/bin/sh", "-c"), new_session=True)
    try:
        await _wait_listening(gateway_port)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        await _wait_closed([gateway_port, *ports.values()])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


async def test_a_service_that_cannot_start_stops_everything_before_the_gateway(
        tmp_path: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    gateway_port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", ports["orders"]))
    taken.listen()
    try:
        runner = _runner(_config(tmp_path / "pygate.toml", gateway_port, ports["users"]), ports)
        _, err = runner.communicate(timeout=30)
        assert runner.returncode == 1
        text = err.decode()
        assert f"the demo orders service cannot listen on 127.0.0.1:{ports['orders']}" in text
        assert "the gateway was not started" in text
        assert "Traceback" not in text
        assert not await accepts_connections(gateway_port)
        assert not await accepts_connections(ports["users"])  # the first one stopped again
    finally:
        taken.close()


async def test_https_mode_serves_tls_and_http2_and_redirects_the_plain_port(
        tmp_path: Path) -> None:
    """`make serve-https`: a local CA's certificate for localhost on the TLS port (ALPN
    offers h2), HSTS, and the configuration's own listen address answering 308."""
    import ssl

    ports = {name: free_port() for name in SERVICES}
    plain, tls_port = free_port(), free_port()
    config = _config(tmp_path / "pygate.toml", plain, ports["users"])
    runner = _runner(config, ports, "--https", str(tls_port), new_session=True)
    try:
        await _wait_listening(tls_port)
        ca = tmp_path / ".demo-tls" / "ca.pem"
        context = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{tls_port}/api/users/1",
                                   ssl=context) as response:
                assert response.status == 200
                assert (await response.json())["id"] in (1, "1")
                assert response.headers["Strict-Transport-Security"] == "max-age=86400"
            async with session.get(f"http://127.0.0.1:{plain}/api/users?x=1",
                                   allow_redirects=False) as response:
                assert response.status == 308
                assert response.headers["Location"] == \
                    f"https://127.0.0.1:{tls_port}/api/users?x=1"
        context.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("localhost", tls_port, ssl=context)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        writer.close()
        assert (tmp_path / "pygate.https.toml").exists()
        os.killpg(runner.pid, signal.SIGINT)
        assert runner.wait(timeout=30) == 0
        out = runner.stdout.read().decode() if runner.stdout else ""
        assert f"--cacert {ca}" in out or "--cacert .demo-tls/ca.pem" in out
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
