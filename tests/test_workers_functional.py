"""``pygate serve --workers N`` and SIGHUP reload, as real processes (Linux /proc).

PRODUCT.md sections 2 and 8: several workers share the port (SO_REUSEPORT), a
worker that dies is replaced, SIGTERM drains every worker and exits 0, a broken
configuration exits 1 before anything is bound; SIGHUP reloads the
configuration file: a valid one serves new requests while in-flight requests
finish on the old one, an invalid one is refused with its errors logged.

Which worker holds a connection is read from /proc: the gateway-side socket
of the connection (local port = the gateway's, remote port = the client's)
is found in ``/proc/net/tcp`` and its inode among the workers' descriptors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from pygate.cli import main
from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    ServeFactory,
    UpstreamFactory,
    accepts_connections,
    free_port,
    parse_responses,
)

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


# ---------------------------------------------------------------------------
# Processes and sockets, from /proc
# ---------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connection_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the TCP socket with this local and remote port, if any."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], int(parts[9])
            if (int(local.rsplit(":", 1)[1], 16) == local_port
                    and int(remote.rsplit(":", 1)[1], 16) == remote_port and inode):
                return inode
    return None


async def eventually(check: Callable[[], Any], within: float = 5.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.01)


@dataclass
class Connection:
    """A keep-alive client connection and the worker that accepted it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    worker: int

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10.0)
        response = parse_responses(head)[0]
        body = await self.reader.readexactly(int(response.headers["Content-Length"]))
        return response.status, body

    def close(self) -> None:
        self.writer.close()


async def connect(port: int, workers: set[int]) -> Connection:
    """Open a connection and find out which of ``workers`` accepted it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client_port = writer.get_extra_info("sockname")[1]

    def owner() -> int | None:
        inode = connection_inode(port, client_port)
        if inode is None:
            return None
        return next((pid for pid in workers if inode in socket_inodes(pid)), None)

    return Connection(reader, writer, await eventually(owner, what="a worker accepts"))


async def one_per_worker(port: int, workers: set[int]) -> dict[int, Connection]:
    """A connection to each worker (the kernel spreads connections; open until all got one)."""
    found: dict[int, Connection] = {}
    extra: list[Connection] = []
    for _ in range(200):
        conn = await connect(port, workers)
        if conn.worker in found:
            extra.append(conn)
        else:
            found[conn.worker] = conn
        if len(found) == len(workers):
            break
    for conn in extra:
        conn.close()
    assert set(found) == workers, f"connections reached only {set(found)} of {workers}"
    return found


def events(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event") == name]


async def workers_ready(gw: GatewayProcess, count: int) -> set[int]:
    """Wait for the supervisor's ``workers ready``; the worker pids (its children)."""
    await eventually(lambda: events(gw, "workers ready"), what="workers ready")
    pids = children(gw.pid)
    assert len(pids) == count, (pids, gw.stderr())
    assert set(events(gw, "workers ready")[0]["pids"]) == pids
    return pids


# ---------------------------------------------------------------------------
# Fixtures: upstreams, and pygate serve with extra arguments
# ---------------------------------------------------------------------------


def config(upstream_url: str, *, workers: int = 2, drain: str = "5s",
           path: str = "/api") -> str:
    return f"""
[gateway]
workers = {workers}
drain_timeout = "{drain}"

[[routes]]
name = "api"
path = "{path}"
upstream = "{upstream_url}"
"""


async def run_to_exit(serve: ServeFactory, text: str, *extra: str) -> tuple[int, str, int]:
    """Start ``pygate serve`` expecting it to exit by itself: (code, stderr, port)."""
    gw = await serve(text, *extra)
    code = await gw.exit_code(within=15.0)
    assert code is not None, "pygate serve kept running"
    return code, gw.stderr(), gw.port


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


async def test_workers_flag_wins_and_every_worker_serves_the_shared_port(
        serve: ServeFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await serve(config(up.url, workers=3), "--workers", "2")
    workers = await workers_ready(gw, 2)
    connections = await one_per_worker(gw.port, workers)
    for conn in connections.values():
        status, _ = await conn.get("/api/x")
        assert status == 200
        conn.close()
    listening = {e["pid"]: e["worker"] for e in events(gw, "listening")}
    assert set(listening) == workers and sorted(listening.values()) == [1, 2]
    assert {e["url"] for e in events(gw, "listening")} == {gw.url}
    assert "Traceback" not in gw.stderr()


async def test_every_worker_makes_its_own_request_ids(
        serve: ServeFactory, upstream: UpstreamFactory) -> None:
    """Workers are forked after the request-ID prefix was first made: each makes its own,
    so no two requests of the gateway share an ID."""
    up = await upstream()
    gw = await serve(config(up.url), "--workers", "2")
    workers = await workers_ready(gw, 2)
    connections = await one_per_worker(gw.port, workers)
    ids: list[str] = []
    for conn in connections.values():
        for _ in range(3):
            conn.writer.write(b"GET /api/x HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10.0)
            response = parse_responses(head)[0]
            await conn.reader.readexactly(int(response.headers["Content-Length"]))
            ids.append(response.headers["X-Request-ID"])
        conn.close()
    assert len(set(ids)) == len(ids), ids
    assert len({request_id[:16] for request_id in ids}) == 2  # a prefix per worker
    assert {seen.headers["X-Request-ID"] for seen in up.seen} == set(ids)


async def test_a_killed_worker_is_replaced_at_once_then_with_backoff(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    workers = await workers_ready(gw, 2)
    victim = min(workers)
    survivor = max(workers)

    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replacement = await eventually(lambda: next(iter(children(gw.pid) - workers), None),
                                   what="a new worker")
    await eventually(lambda: any(e.get("pid") == replacement for e in events(gw, "listening")),
                     what="the new worker listens")
    assert time.monotonic() - killed < 2.0  # about a second, even on a busy machine
    exited = events(gw, "worker exited unexpectedly")
    assert exited[0]["pid"] == victim and exited[0]["status"] == "killed by SIGKILL"
    assert children(gw.pid) == {survivor, replacement}
    workers = {survivor, replacement}
    for conn in (await one_per_worker(gw.port, workers)).values():
        assert (await conn.get("/api/after"))[0] == 200
        conn.close()

    # A second quick death of the same slot is a crash loop: the restart waits,
    # and meanwhile the other worker serves every new connection.
    os.kill(replacement, signal.SIGKILL)
    delayed = await eventually(lambda: events(gw, "worker restarts after a delay"),
                               what="a delayed restart")
    assert delayed[0]["delay_s"] == 0.5 and delayed[0]["failures"] == 2
    assert children(gw.pid) == {survivor}
    for _ in range(10):
        conn = await connect(gw.port, {survivor})
        assert (await conn.get("/api/meanwhile"))[0] == 200
        conn.close()
    third = await eventually(lambda: next(iter(children(gw.pid) - {survivor}), None),
                             within=3.0, what="the restart after the delay")
    assert third not in (victim, replacement)
    await eventually(lambda: any(e.get("pid") == third for e in events(gw, "listening")),
                     what="the restarted worker listens")
    assert "Traceback" not in gw.stderr()


async def test_sigterm_to_one_worker_restarts_it_gracefully(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    workers = await workers_ready(gw, 2)
    os.kill(min(workers), signal.SIGTERM)
    replacement = await eventually(lambda: next(iter(children(gw.pid) - workers), None),
                                   what="a new worker")
    exited = await eventually(lambda: events(gw, "worker exited unexpectedly"))
    assert exited[0]["pid"] == min(workers) and exited[0]["status"] == "exit code 0"
    assert not events(gw, "worker restarts after a delay")
    for conn in (await one_per_worker(gw.port, {replacement, max(workers)})).values():
        assert (await conn.get("/api/x"))[0] == 200
        conn.close()


async def test_sigterm_drains_every_worker_and_all_exit_0(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    arrived: list[str] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.append(request.path)
        await asyncio.sleep(1.0)
        return web.Response(text=f"finished {request.path}")

    up = await upstream(slow)
    gw = await gateway_process(config(up.url, drain="5s"))
    workers = await workers_ready(gw, 2)
    connections = await one_per_worker(gw.port, workers)
    in_flight = {pid: asyncio.get_running_loop().create_task(conn.get(f"/api/{pid}"))
                 for pid, conn in connections.items()}
    await eventually(lambda: len(arrived) == 2, what="both requests reach the upstream")

    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    await eventually(lambda: len(events(gw, "draining")) == 3, what="everyone drains")
    deadline = time.monotonic() + 1.0  # a worker closes its socket just after its log line
    while await accepts_connections(gw.port):
        assert time.monotonic() < deadline, "connections still accepted after SIGTERM"
        await asyncio.sleep(0.01)
    assert gw.proc.returncode is None and all(alive(pid) for pid in workers)

    for pid, task in in_flight.items():
        assert await asyncio.wait_for(task, 5.0) == (200, f"finished /{pid}".encode())
    assert await gw.exit_code(within=5.0) == 0, gw.stderr()
    assert time.monotonic() - started < 4.0  # the 1s requests, not the 5s drain_timeout
    assert not any(alive(pid) for pid in workers)
    exited = {e["pid"]: e["status"] for e in events(gw, "worker exited")}
    assert exited == {pid: "exit code 0" for pid in workers}
    assert [e for e in events(gw, "stopped") if e.get("supervisor") == gw.pid]
    assert "Traceback" not in gw.stderr()


async def test_a_worker_that_does_not_drain_is_killed_and_the_supervisor_exits_0(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url, drain="100ms"))
    workers = await workers_ready(gw, 2)
    stuck = min(workers)
    os.kill(stuck, signal.SIGSTOP)  # cannot handle SIGTERM any more
    try:
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert await gw.exit_code(within=8.0) == 0, gw.stderr()
        elapsed = time.monotonic() - started
        # drain_timeout (0.1s) + the supervisor's grace (2s), not much more
        assert 1.9 < elapsed < 5.0, elapsed
    finally:
        if alive(stuck):
            os.kill(stuck, signal.SIGKILL)
    killing = events(gw, "worker still running after the drain; killing it")
    assert [e["pid"] for e in killing] == [stuck]
    exited = {e["pid"]: e["status"] for e in events(gw, "worker exited")}
    assert exited[stuck] == "killed by SIGKILL" and exited[max(workers)] == "exit code 0"


async def test_workers_leave_when_the_supervisor_is_killed(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url))
    workers = await workers_ready(gw, 2)
    gw.proc.kill()
    await gw.proc.wait()
    await eventually(lambda: not any(alive(pid) for pid in workers), within=5.0,
                     what="orphaned workers exit")
    assert len(events(gw, "supervisor gone; draining")) == 2


async def test_broken_config_with_workers_exits_1_before_binding(
        serve: ServeFactory) -> None:
    broken = '[gateway]\nworkers = 2\n\n[[routes]]\nname = "api"\npath = "/api"\nupstrem = "x"\n'
    code, stderr, port = await run_to_exit(serve, broken, "--workers", "2")
    assert code == 1, stderr
    assert "routes[0].upstrem" in stderr and "Traceback" not in stderr
    assert "supervisor started" not in stderr and "listening" not in stderr
    assert not await accepts_connections(port)



@pytest.mark.parametrize("bad", ["0", "many", "-1", "2.5"])
def test_bad_workers_flag_exits_1_before_binding(tmp_path: Path, bad: str) -> None:
    config_path = tmp_path / "pygate.toml"
    config_path.write_text(config("http://127.0.0.1:1", workers=1))
    port = free_port()
    result = CliRunner().invoke(main, ["serve", "-c", str(config_path), "--listen",
                                       f"127.0.0.1:{port}", "--workers", bad])
    assert result.exit_code == 1, result.output
    assert "--workers: expected a number >= 1" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nothing was bound


async def test_port_in_use_with_workers_exits_1(serve: ServeFactory, tmp_path: Path) -> None:
    valid = '[[routes]]\nname = "api"\npath = "/api"\nupstream = "http://127.0.0.1:1"\n'
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        gw = await serve(valid, "--workers", "2", "--listen", f"127.0.0.1:{port}")
        code = await gw.exit_code(within=15.0)
    assert code == 1, gw.stderr()
    assert "cannot listen on" in gw.stderr() and "Traceback" not in gw.stderr()
    assert "worker started" not in gw.stderr()


# ---------------------------------------------------------------------------
# Reload (SIGHUP)
# ---------------------------------------------------------------------------


def two_routes(old_url: str, new_url: str, *, workers: int = 1, which: str = "old") -> str:
    target = old_url if which == "old" else new_url
    return config(target, workers=workers, path=f"/{which}")


async def test_sighup_reload_switches_routes_and_in_flight_requests_finish(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.wait_for(release.wait(), 10.0)
        return web.Response(text="old and finished")

    old_up = await upstream(slow)
    new_up = await upstream()
    gw = await gateway_process(two_routes(old_up.url, new_up.url))
    conn = await connect(gw.port, {gw.pid})
    in_flight = asyncio.get_running_loop().create_task(conn.get("/old/slow"))
    await asyncio.wait_for(arrived.wait(), 5.0)

    gw.config_path.write_text(two_routes(old_up.url, new_up.url, which="new"))
    gw.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: events(gw, "reloaded"), what="reloaded")
    fresh = await connect(gw.port, {gw.pid})
    assert (await fresh.get("/new/x"))[0] == 200
    assert new_up.last.path == "/x"
    assert (await fresh.get("/old/x"))[0] == 404
    assert not events(gw, "previous configuration stopped"), "stopped with a request in flight"

    release.set()
    assert await asyncio.wait_for(in_flight, 5.0) == (200, b"old and finished")
    # The same keep-alive connection's next request sees the new configuration.
    assert (await conn.get("/new/y"))[0] == 200
    await eventually(lambda: events(gw, "previous configuration stopped"),
                     what="the old gateway stops")
    conn.close()
    fresh.close()
    assert await gw.terminate() == 0
    assert "Traceback" not in gw.stderr()


async def test_sighup_with_an_invalid_file_keeps_the_configuration(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gw = await gateway_process(config(up.url, workers=1))
    gw.config_path.write_text(config(up.url, workers=1) + 'strip_pth = true\n')
    gw.proc.send_signal(signal.SIGHUP)
    refused = await eventually(lambda: events(gw, "reload refused"), what="reload refused")
    assert refused[0]["file"] == str(gw.config_path)
    assert any(e.startswith("routes[0].strip_pth:") and "strip_path" in e
               for e in refused[0]["errors"]), refused
    conn = await connect(gw.port, {gw.pid})
    assert (await conn.get("/api/still"))[0] == 200
    conn.close()
    assert not events(gw, "reloaded")
    assert gw.proc.returncode is None


async def test_sighup_with_workers_reloads_every_worker_and_replacements(
        gateway_process: GatewayFactory, upstream: UpstreamFactory) -> None:
    old_up = await upstream()
    new_up = await upstream()
    gw = await gateway_process(two_routes(old_up.url, new_up.url, workers=2))
    workers = await workers_ready(gw, 2)

    # Invalid: the supervisor refuses it and the workers hear nothing.
    gw.config_path.write_text("[gateway\n")
    gw.proc.send_signal(signal.SIGHUP)
    refused = await eventually(lambda: events(gw, "reload refused"), what="reload refused")
    assert refused[0]["supervisor"] == gw.pid and "pid" not in refused[0]
    assert "invalid TOML" in refused[0]["errors"][0]

    gw.config_path.write_text(two_routes(old_up.url, new_up.url, workers=2, which="new"))
    gw.proc.send_signal(signal.SIGHUP)
    reloaded = await eventually(lambda: len(events(gw, "reloaded")) == 2 and
                                events(gw, "reloaded"), what="both workers reload")
    assert {e["pid"] for e in reloaded} == workers
    assert [e.get("pid") for e in events(gw, "reload refused")] == [None]
    for conn in (await one_per_worker(gw.port, workers)).values():
        assert (await conn.get("/new/x"))[0] == 200
        assert (await conn.get("/old/x"))[0] == 404
        conn.close()

    # A worker replaced after the reload starts with the new configuration.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replacement = await eventually(lambda: next(iter(children(gw.pid) - workers), None),
                                   what="a new worker")
    for conn in (await one_per_worker(gw.port, {replacement, max(workers)})).values():
        assert (await conn.get("/new/y"))[0] == 200
        conn.close()
    assert not [e for e in events(gw, "reloading") if e.get("pid") == replacement]
