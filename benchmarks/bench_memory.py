"""Memory per idle connection and per in-flight request (PRODUCT.md section 9).

Starts ``pygate serve`` with one route to a slow upstream (an aiohttp app that
answers after ``--hold`` seconds), then:

1. opens ``--connections`` keep-alive connections, sends one quick request on
   each, and keeps them open and idle: the growth of the gateway's RSS divided by
   the count is the memory per idle connection;
2. sends ``--connections`` requests at once to the slow route and reads the RSS
   while all of them are in flight: the growth over the idle figure divided by the
   count is the memory per in-flight request.

    .venv/bin/python benchmarks/bench_memory.py [--connections 1000] [--write-readme]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from common import free_port, replace_readme_section

SECTION = "memory"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def slow_upstream(port: int, hold: float) -> web.AppRunner:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(hold)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    return runner


async def request(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)


async def measure(connections: int, hold: float) -> dict[str, float]:
    upstream_port, port = free_port(), free_port()
    runner = await slow_upstream(upstream_port, hold)
    workdir = Path(tempfile.mkdtemp(prefix="pygate-bench-memory-"))
    config = workdir / "pygate.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{port}"\ntimeout = "60s"\n'
        f'[upstreams.slow]\ntargets = ["http://127.0.0.1:{upstream_port}"]\n'
        f'max_connections = {connections * 2}\n'
        '[[routes]]\nname = "all"\npath = "/"\nupstream = "slow"\nstrip_path = false\n')
    pygate = str(Path(sys.executable).parent / "pygate")
    proc = await asyncio.create_subprocess_exec(
        pygate, "serve", "-c", str(config), "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        warm = [await request(port, "/quick") for _ in range(10)]
        for reader, writer in warm:
            await read_response(reader)
            writer.close()
        await asyncio.sleep(0.5)
        base = rss_kb(proc.pid)
        idle = []
        for _ in range(connections):
            reader, writer = await request(port, "/quick")
            await read_response(reader)
            idle.append(writer)
        await asyncio.sleep(0.5)
        with_idle = rss_kb(proc.pid)
        for writer in idle:
            writer.close()
        await asyncio.sleep(1.0)
        after_close = rss_kb(proc.pid)
        started = time.monotonic()
        busy = await asyncio.gather(*(request(port, "/slow") for _ in range(connections)))
        await asyncio.sleep(max(0.0, hold / 2 - (time.monotonic() - started)))
        in_flight = rss_kb(proc.pid)
        await asyncio.gather(*(read_response(reader) for reader, _ in busy))
        for _, writer in busy:
            writer.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        await runner.cleanup()
    return {
        "base_mb": base / 1024,
        "idle_kb": (with_idle - base) / connections,
        "after_close_mb": after_close / 1024,
        "in_flight_kb": (in_flight - after_close) / connections,
        "peak_mb": in_flight / 1024,
    }


CONNECTIONS = 1000
HOLD = 4.0


def render(figures: dict[str, float], connections: int, hold: float) -> str:
    """The README table of :func:`measure`'s figures."""
    return "\n".join([
        "| measure | value |",
        "| --- | ---: |",
        f"| gateway RSS after start-up and 10 requests | {figures['base_mb']:.1f} MB |",
        f"| per idle keep-alive connection ({connections:,} open) "
        f"| {figures['idle_kb']:.1f} KB |",
        f"| RSS once they closed | {figures['after_close_mb']:.1f} MB |",
        f"| per in-flight request, each on its own client connection and upstream "
        f"connection ({connections:,} at once, upstream holding {hold:g} s) "
        f"| {figures['in_flight_kb']:.1f} KB |",
        f"| peak RSS with them in flight | {figures['peak_mb']:.1f} MB |",
        "",
        f"{time.strftime('%Y-%m-%d')}; `bench_memory.py --connections {connections}`; "
        f"RSS from /proc/PID/status VmRSS of the `pygate serve` process (memory the "
        f"allocator keeps after connections close stays counted); Python "
        f"{sys.version.split()[0]}.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--hold", type=float, default=HOLD,
                        help="seconds the slow upstream holds each request")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.connections, args.hold))
    text = render(figures, args.connections, args.hold)
    print(text)
    if args.write_readme:
        replace_readme_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
