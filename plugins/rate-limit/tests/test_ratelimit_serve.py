"""Two real ``pygate serve`` processes share one limit through one Redis."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from pygate.testing import free_port
from pygate.testing import serve_process as serve
from pygate.testing import stop_serve as stop


async def test_two_gateway_processes_share_one_limit(tmp_path, fake_upstream, redis_server):
    upstream = await fake_upstream()
    config = tmp_path / "pygate.toml"
    config.write_text(f"""
[plugins.rate-limit]
limit = 30
window = "1h"
algorithm = "fixed-window"
backend = "{redis_server.url}"

[[routes]]
name = "shared"
path = "/"
upstream = "{upstream.url}"
""")
    left = time.time() % 3600
    if 3600 - left < 10:  # keep the whole test inside one hour window
        await asyncio.sleep(3600 - left + 0.1)
    ports = [free_port(), free_port()]
    procs = await asyncio.gather(*(serve(config, port, tmp_path / f"gw{i}.log")
                                   for i, port in enumerate(ports)))
    try:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(index: int) -> tuple[int, int]:
                port = ports[index % 2]
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
                    return port, response.status

            results = await asyncio.gather(*(one(i) for i in range(100)))
        statuses = [status for _, status in results]
        assert statuses.count(200) == 30
        assert statuses.count(429) == 70
        assert len(upstream.requests) == 30
        for port in ports:  # each node holds half the traffic, more than it may pass
            assert [s for p, s in results if p == port].count(429) >= 20
        # Redis gone: on_backend_error = "allow" (the default) lets requests through
        await asyncio.to_thread(redis_server.stop)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{ports[0]}/") as response:
                assert response.status == 200
    finally:
        codes = [await asyncio.to_thread(stop, proc) for proc in procs]
    assert codes == [0, 0]
    text = await asyncio.to_thread((tmp_path / "gw0.log").read_text)
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    down = [e for e in events if e["event"] == "rate-limit backend unavailable"]
    assert len(down) == 1
    assert down[0]["plugin"] == "rate-limit" and down[0]["level"] == "warning"
    assert down[0]["on_backend_error"] == "allow"
