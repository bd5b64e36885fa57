"""The gateway configuration the fuzzer runs against, and the upstream behind it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from aiohttp import web

JWT_SECRET = "fuzz-secret-fuzz-secret-fuzz-secret-0123"
"""The HS256 secret of the ``private`` route (32 bytes or more, as the plugin requires)."""

SEEN_HEADER = "X-Upstream-Seen"
"""On every upstream answer: the ``X-Request-ID`` of the request the upstream received."""

BODY_HEADER = "X-Upstream-Body"
"""On every upstream answer: ``LENGTH:SHA256-PREFIX`` of the request body it received."""

UNDERSCORE_HEADER = "X-Upstream-Underscores"
"""On an upstream answer: the header names with ``_`` it received (PRODUCT.md 4.7: none)."""

UPSTREAM_BODY = b'{"ok":true}'


def gateway_config(upstream_port: int, access_log: Path) -> str:
    """The ``pygate.toml`` fuzzed: a template, a prefix, a jwt and a WebSocket route.

    ``retries = 0`` so that the upstream receives each forwarded request once
    (the forwarding check counts them); the access log (the ``logging`` plugin)
    shows the status of requests whose client never read its answer.
    """
    return f"""
[gateway]
timeout = "3s"
max_body = "64KB"

[upstreams.backend]
targets = ["http://127.0.0.1:{upstream_port}"]
retries = 0

[plugins.logging]
format = "json"
path = "{access_log}"
flush_interval = "50ms"

[[routes]]
name = "item"
path = "/items/{{id}}"
methods = ["GET", "PUT", "DELETE"]
upstream = "backend"

[[routes]]
name = "api"
path = "/api"
upstream = "backend"

[[routes]]
name = "private"
path = "/private"
upstream = "backend"
plugins = {{ jwt = {{ secret = "{JWT_SECRET}", algorithms = ["HS256"], optional = false }} }}

[[routes]]
name = "ws"
path = "/ws"
upstream = "backend"
"""


def body_digest(body: bytes) -> str:
    return f"{len(body)}:{hashlib.sha256(body).hexdigest()[:16]}"


class FuzzUpstream:
    """The upstream: records each request's ``X-Request-ID`` on arrival, answers small.

    Like most servers (and unlike aiohttp's default) it does not decode request
    bodies, so it sees the bytes the gateway sent. A WebSocket handshake is
    accepted and closed at once (1000); anything else has its body read to the
    end and gets ``{"ok":true}``. Every answer carries :data:`SEEN_HEADER` and
    :data:`BODY_HEADER` (and :data:`UNDERSCORE_HEADER` when it applies).
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> FuzzUpstream:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            rid = request.headers.get("X-Request-ID", "")
            self.seen.append(rid)
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # e.g. aiohttp's own 404 for CONNECT
                exc.headers[SEEN_HEADER] = rid
                raise
            if not response.prepared:
                response.headers[SEEN_HEADER] = rid
                underscored = sorted({name for name in request.headers if "_" in name})
                if underscored:
                    response.headers[UNDERSCORE_HEADER] = ",".join(underscored)
            return response

        app = web.Application(middlewares=[record])
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0,
                                     auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(protocols=("v1.chat",))
            if ws.can_prepare(request):
                ws.headers[SEEN_HEADER] = request.headers.get("X-Request-ID", "")
                await ws.prepare(request)
                await ws.close(code=1000)
                return ws
        body = b""
        try:
            async for chunk in request.content.iter_any():
                body += chunk
        except ConnectionError:  # the gateway let go of the request (its client did)
            return web.Response(status=499)
        return web.Response(body=UPSTREAM_BODY, content_type="application/json",
                            headers={BODY_HEADER: body_digest(body)})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def hs256_token(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


VALID_TOKEN = hs256_token({"sub": "fuzz", "exp": 4_102_444_800})  # 2100-01-01
