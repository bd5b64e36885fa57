"""A minimal hand-written aiohttp reverse proxy: the baseline pygate is measured against.

It is what a competent engineer writes in an afternoon and nothing more: one
``ClientSession`` with a keep-alive ``TCPConnector`` and ``auto_decompress=False``;
it forwards the method, the raw path and query, and the headers minus hop-by-hop
ones, and streams the request and response bodies through. No routing, path
normalization, request IDs, X-Forwarded-*, retries or plugins.

    python benchmarks/peers/aiohttp/proxy.py --listen 127.0.0.1:9000 --upstream http://127.0.0.1:8000

Uses uvloop when it can be imported.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterable

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def end_to_end(headers: CIMultiDictProxy[str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop ones, those Connection names, and ``drop``."""
    named = {
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, ())
        for token in value.split(",")
    }
    skip = HOP_BY_HOP | named | {name.lower() for name in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    headers = end_to_end(request.headers, drop=(hdrs.HOST,))
    body = request.content if request.body_exists else None
    try:
        upstream = await session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        )
    except (ClientError, TimeoutError):
        return web.json_response({"error": "bad gateway"}, status=502)
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(end_to_end(upstream.headers))
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def client_session(app: web.Application) -> AsyncIterator[None]:
    connector = TCPConnector(limit=256, keepalive_timeout=60)
    async with ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=ClientTimeout(total=None, sock_connect=5, sock_read=60),
    ) as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
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
