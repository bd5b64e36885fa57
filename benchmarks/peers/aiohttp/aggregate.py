"""The aiohttp peer of ``bench_aggregate.py``: the same composition, written by hand.

``GET /agg/{id}`` calls, at once (``asyncio.gather``), ``GET /users/{id}`` and
``GET /orders/{id}`` (required) and ``GET /products?orderId={id}`` (optional)
on the upstream through one ``ClientSession`` with a keep-alive
``TCPConnector``, and answers ``{"user": ..., "order": ..., "items": ...}``
(compact JSON). A failed required call gives 502; a failed optional call gives
``null`` and ``X-Pygate-Partial: items``, as pygate does. No request IDs,
X-Forwarded-*, per-call deadlines or plugins.

    python benchmarks/peers/aiohttp/aggregate.py --listen 127.0.0.1:9000 --upstream http://127.0.0.1:8000

Uses uvloop when it can be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


class CallFailed(Exception):
    pass


async def get_json(session: ClientSession, url: str) -> Any:
    try:
        async with session.get(url, headers={"Accept": "application/json"}) as response:
            if not 200 <= response.status < 300:
                raise CallFailed(f"status {response.status}")
            return json.loads(await response.read())
    except (ClientError, TimeoutError, ValueError) as exc:
        raise CallFailed(str(exc)) from exc


async def aggregate(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    base = request.app[UPSTREAM]
    ident = quote(request.match_info["id"], safe="")
    user, order, items = await asyncio.gather(
        get_json(session, f"{base}/users/{ident}"),
        get_json(session, f"{base}/orders/{ident}"),
        get_json(session, f"{base}/products?orderId={ident}"),
        return_exceptions=True,
    )
    for name, outcome in (("user", user), ("order", order)):
        if isinstance(outcome, BaseException):
            return web.json_response({"title": "Bad Gateway", "status": 502,
                                      "detail": f"call {name!r} failed"}, status=502)
    headers = {"Content-Type": "application/json"}
    if isinstance(items, BaseException):
        items = None
        headers["X-Pygate-Partial"] = "items"
    body = json.dumps({"user": user, "order": order, "items": items}, separators=(",", ":"))
    return web.Response(body=body.encode(), headers=headers)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    connector = TCPConnector(limit=256, keepalive_timeout=60)
    async with ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        timeout=ClientTimeout(total=3),
    ) as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_get("/agg/{id}", aggregate)
    return app


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="URL")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        make_app(args.upstream),
        host=host or "127.0.0.1",
        port=int(port),
        access_log=None,
        print=None,
        shutdown_timeout=2,
        loop=new_loop(),
    )


if __name__ == "__main__":
    main()
