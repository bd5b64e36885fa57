"""The minimal aiohttp proxy of ``proxy.py`` plus the checks a gateway makes, written by hand.

Before forwarding, every request is checked the way a competent engineer would
write it inline, without a plugin system:

1. **JWT**: ``Authorization: Bearer TOKEN`` verified with pyjwt (HS256, ``exp``
   required) on every request; 401 otherwise.
2. **Rate limit**: a fixed window per token subject in a plain dict
   (``RATE_LIMIT`` requests per ``RATE_WINDOW`` seconds); 429 with
   ``Retry-After`` past it. Every answer carries ``RateLimit-Limit``,
   ``RateLimit-Remaining`` and ``RateLimit-Reset``.
3. **Identity headers**: the client's ``X-User-Id`` and ``X-User-Role`` are
   dropped; the token's ``sub`` and ``role`` claims are sent instead.

Forwarding is ``proxy.py``'s (one keep-alive ``ClientSession``, hop-by-hop
headers stripped, bodies streamed).

With ``ACCESS_LOG=FILE``, aiohttp's access logger writes one JSON line per request
to FILE (time, method, path, status, duration, bytes out, client address, token
subject) through a buffered file object: an ``AbstractAccessLogger`` subclass, the
way aiohttp documents custom access logs.

    JWT_SECRET=... python benchmarks/peers/aiohttp/proxy_checks.py \\
        --listen 127.0.0.1:9000 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from datetime import UTC, datetime
from typing import IO

import jwt
from aiohttp import ClientError, hdrs, web
from aiohttp.abc import AbstractAccessLogger
from proxy import SESSION, UPSTREAM, client_session, end_to_end, new_loop
from yarl import URL

SECRET = web.AppKey("secret", str)


class FixedWindow:
    """``limit`` requests per ``window`` seconds and key, in a dict of this process."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.counters: dict[str, tuple[int, int]] = {}  # key -> (window number, count)

    def hit(self, key: str) -> tuple[bool, int, int]:
        """``(allowed, remaining, seconds until the window resets)``."""
        now = time.time()
        number = int(now // self.window)
        reset = math.ceil((number + 1) * self.window - now)
        current, count = self.counters.get(key, (number, 0))
        if current != number:
            count = 0
        if count >= self.limit:
            return False, 0, reset
        self.counters[key] = (number, count + 1)
        return True, self.limit - count - 1, reset


LIMITER = web.AppKey("limiter", FixedWindow)
CONSUMER = "consumer"  # request[CONSUMER]: the token's subject, for the access log


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON line per request, appended to the file named by ``ACCESS_LOG``."""

    out: IO[str] | None = None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if self.out is None:
            return
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "method": request.method,
            "path": request.raw_path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "bytes_out": response.body_length,
            "client_ip": request.remote,
            "consumer": request.get(CONSUMER),
        }
        self.out.write(json.dumps(line, separators=(",", ":")) + "\n")


def refuse(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def proxy(request: web.Request) -> web.StreamResponse:
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme != "Bearer" or not token:
        return refuse(401, "a bearer token is required",
                      {"WWW-Authenticate": 'Bearer realm="aiohttp"'})
    try:
        claims = jwt.decode(token, request.app[SECRET], algorithms=["HS256"],
                            options={"require": ["exp"]})
    except jwt.InvalidTokenError:
        return refuse(401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    request[CONSUMER] = str(claims["sub"])
    limiter = request.app[LIMITER]
    allowed, remaining, reset = limiter.hit(str(claims["sub"]))
    limit_headers = {"RateLimit-Limit": str(limiter.limit),
                     "RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(reset)}
    if not allowed:
        return refuse(429, "rate limit exceeded", {"Retry-After": str(reset), **limit_headers})

    headers = end_to_end(request.headers, drop=(hdrs.HOST, "X-User-Id", "X-User-Role"))
    headers["X-User-Id"] = str(claims["sub"])
    role = claims.get("role")
    if role:
        headers["X-User-Role"] = ",".join(role) if isinstance(role, list) else str(role)

    session = request.app[SESSION]
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    body = request.content if request.body_exists else None
    try:
        upstream = await session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        )
    except (ClientError, TimeoutError):
        return refuse(502, "bad gateway")
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(end_to_end(upstream.headers))
        response.headers.update(limit_headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def make_app(upstream: str, secret: str, limit: int, window: float) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[SECRET] = secret
    app[LIMITER] = FixedWindow(limit, window)
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="URL")
    args = parser.parse_args(argv)
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        parser.error("JWT_SECRET is not set")
    limit = int(os.environ.get("RATE_LIMIT", "1000000000"))
    window = float(os.environ.get("RATE_WINDOW", "60"))
    host, _, port = args.listen.rpartition(":")
    access_log: logging.Logger | None = None
    path = os.environ.get("ACCESS_LOG")
    if path:
        JsonAccessLogger.out = open(path, "a", buffering=64 * 1024)
        access_log = logging.getLogger("access")
    web.run_app(
        make_app(args.upstream, secret, limit, window),
        host=host or "127.0.0.1",
        port=int(port),
        access_log=access_log,
        access_log_class=JsonAccessLogger,
        print=None,
        shutdown_timeout=2,
        loop=new_loop(),
    )
    if JsonAccessLogger.out is not None:
        JsonAccessLogger.out.close()


if __name__ == "__main__":
    main()
