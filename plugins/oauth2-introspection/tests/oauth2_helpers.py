"""Shared helpers of the oauth2-introspection tests: a fake identity provider,
a gateway config, and a tiny plugin that shows upstreams the caller's identity."""

from __future__ import annotations

import asyncio
import json
import time
import types
from typing import Any

import pygate_oauth2_introspection
from aiohttp import web

from pygate.plugin import Context, UpstreamRequest, hookimpl

CLIENT_ID = "pygate"
CLIENT_SECRET = "s3cret:with-colon"


class FakeIdp:
    """An RFC 7662 introspection endpoint: ``tokens`` maps a token to its response
    (unknown tokens are inactive); ``status``, ``delay`` and ``raw`` simulate failures."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.status = 200
        self.delay = 0.0
        self.raw: bytes | None = None
        self.calls: list[dict[str, Any]] = []

    def active(self, token: str, **members: Any) -> None:
        now = int(time.time())
        self.tokens[token] = {"active": True, "sub": "alice", "scope": "orders:read",
                              "client_id": "web", "exp": now + 300, "iat": now, **members}

    async def handler(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.calls.append({"authorization": request.headers.get("Authorization"),
                           "content_type": request.content_type,
                           "form": {k: str(v) for k, v in form.items()}})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": "server_error"}, status=self.status)
        if self.raw is not None:
            return web.Response(body=self.raw, content_type="application/json")
        return web.json_response(self.tokens.get(str(form.get("token")), {"active": False}))


def _identity_echo() -> types.ModuleType:
    module = types.ModuleType("identity_echo")
    module.PRIORITY = 0  # type: ignore[attr-defined]

    @hookimpl
    def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
        identity = ctx.identity
        if identity is not None:
            upstream_request.headers["X-Identity"] = json.dumps({
                "id": identity.id, "roles": list(identity.roles),
                "source": identity.source, "fields": identity.fields})

    module.transform_request = transform_request  # type: ignore[attr-defined]
    return module


PLUGINS = {"oauth2-introspection": pygate_oauth2_introspection,
           "identity-echo": _identity_echo()}


def settings(idp_url: str, **extra: Any) -> dict[str, Any]:
    return {"introspection_url": f"{idp_url}/introspect", "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, **extra}


def config(upstream_url: str, table: dict[str, Any], *,
           routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"plugins": {"oauth2-introspection": table, "identity-echo": {}},
            "routes": routes or [{"name": "api", "path": "/", "upstream": upstream_url}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def identity_seen(upstream: Any) -> dict[str, Any] | None:
    raw = upstream.requests[-1].headers.get("X-Identity")
    return json.loads(raw) if raw else None
