"""Two real ``pygate serve`` processes share one cache through one Redis."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from pygate.testing import free_port
from pygate.testing import serve_process as serve
from pygate.testing import stop_serve as stop


async def test_a_response_cached_through_one_node_is_a_hit_on_the_other(tmp_path, fake_upstream,
                                                                      redis_server):
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.path_qs)
        return web.Response(text=f"{request.path_qs} #{len(calls)}",
                            headers={"Cache-Control": "max-age=60", "ETag": f'"{len(calls)}"'})

    upstream = await fake_upstream(handler=handle)
    config = tmp_path / "pygate.toml"
    config.write_text(f"""
[plugins.cache]
backend = "{redis_server.url}"

[[routes]]
name = "shared"
path = "/"
upstream = "{upstream.url}"
""")
    ports = [free_port(), free_port()]
    procs = await asyncio.gather(*(serve(config, port, tmp_path / f"gw{i}.log")
                                   for i, port in enumerate(ports)))
    try:
        async with aiohttp.ClientSession() as session:
            async def get(node: int, path: str) -> tuple[str | None, str, str | None]:
                url = f"http://127.0.0.1:{ports[node]}{path}"
                async with session.get(url) as response:
                    assert response.status == 200
                    return (response.headers.get("X-Cache"), await response.text(),
                            response.headers.get("Age"))

            assert await get(0, "/items/1?view=full") == ("MISS", "/items/1?view=full #1", None)
            cache, body, age = await get(1, "/items/1?view=full")
            assert (cache, body) == ("HIT", "/items/1?view=full #1")
            assert age is not None and int(age) <= 1
            assert (await get(1, "/items/2"))[:2] == ("MISS", "/items/2 #2")
            assert (await get(0, "/items/2"))[:2] == ("HIT", "/items/2 #2")
        assert calls == ["/items/1?view=full", "/items/2"]
    finally:
        codes = [await asyncio.to_thread(stop, proc) for proc in procs]
    assert codes == [0, 0]
