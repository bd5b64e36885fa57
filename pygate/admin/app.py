"""The admin listener's HTTP endpoints (an aiohttp application on its own socket).

Every answer is JSON, every error an RFC 9457 problem document built by
:mod:`pygate.errors`. ``/ready``, ``/healthz``, the dashboard page ``/`` and
its files under ``/static/`` need no token; every other endpoint needs
``Authorization: Bearer TOKEN`` when ``admin.token`` is set (compared in
constant time), else 401. docs/operations.md describes each endpoint.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from .. import __version__
from ..errors import GatewayError, NotFound, ServiceUnavailable, Unauthorized, problem_response
from ..sanitize import request_id
from .node import SingleNode
from .stats import BUCKETS_MS, merge
from .views import merge_upstreams, plugin_table, render_metrics, route_table

log = structlog.get_logger("pygate")

NODE = web.AppKey("node", SingleNode)

STATIC_DIR = Path(__file__).resolve().parent.parent / "admin_static"
"""The dashboard's files (``index.html`` for ``/``, the rest under ``/static/``)."""

OPEN_PATHS = frozenset({"/ready", "/healthz", "/"})


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status,
                             dumps=lambda obj: json.dumps(obj, separators=(",", ":"),
                                                          default=str))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# -- middlewares --------------------------------------------------------------


@web.middleware
async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error as a problem document (also the router's own 404 and 405)."""
    rid = request_id(request.headers.get("X-Request-ID"))
    try:
        response: web.StreamResponse = await handler(request)
    except GatewayError as exc:
        return problem_response(exc.status, exc.detail, request_id=rid, headers=exc.headers,
                                extra=exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        detail = ("no admin endpoint at this path" if exc.status == 404
                  else exc.reason or "refused")
        return problem_response(exc.status, detail, request_id=rid, headers=headers)
    except Exception:
        log.exception("admin request failed", path=request.path)
        return problem_response(500, "the admin endpoint failed", request_id=rid)
    response.headers.setdefault("X-Request-ID", rid)
    return response


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """The token, on every endpoint but the probes and the dashboard's files."""
    path = request.path
    if path not in OPEN_PATHS and not path.startswith("/static/"):
        token = request.app[NODE].local.token
        if token is not None and not token_matches(request.headers.get("Authorization"), token):
            raise Unauthorized("this admin endpoint needs the admin token: "
                               "Authorization: Bearer TOKEN",
                               headers={"WWW-Authenticate": 'Bearer realm="pygate admin"'})
    response: web.StreamResponse = await handler(request)
    return response


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer TOKEN`` holds ``token`` (compared in constant time)."""
    scheme, _, given = (header or "").strip().partition(" ")
    expected = token.encode("utf-8", "surrogateescape")
    supplied = given.strip().encode("utf-8", "surrogateescape")
    # compare even for a wrong scheme, so that the time taken tells nothing
    return hmac.compare_digest(supplied, expected) and scheme.lower() == "bearer"


# -- endpoints ----------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    node = request.app[NODE]
    local = node.local
    processes, missing = await node.gather("status")
    body = {
        "version": __version__,
        "pid": node.pid,
        "started": _iso(node.started),
        "uptime_s": round(time.time() - node.started, 3),
        "config": local.config_info(),
        "generation": node.generation(),
        "workers": node.workers,
        "processes": [answer for _, answer in processes]
        + [{"worker": w, "ready": False, "reachable": False} for w in missing],
        "ready": local.ready and not node.stopping,
        "draining": local.draining,
    }
    return _json(body)


async def routes(request: web.Request) -> web.Response:
    return _json({"routes": route_table(request.app[NODE].local.gateway())})


async def upstreams(request: web.Request) -> web.Response:
    answers, missing = await request.app[NODE].gather("upstreams")
    return _json({"upstreams": merge_upstreams(answers), "workers": len(answers),
                  "missing": missing})


async def plugins(request: web.Request) -> web.Response:
    return _json(plugin_table(request.app[NODE].local.gateway()))


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await render_metrics(request.app[NODE].local.gateway())
    return web.Response(body=body, headers={"Content-Type": content_type})


async def reload(request: web.Request) -> web.Response:
    return _json(await request.app[NODE].reload())


async def purge(request: web.Request) -> web.Response:
    query = request.query
    args = {"prefix": query.get("prefix"), "route": query.get("route")}
    answers, missing = await request.app[NODE].gather("purge", args)
    return _json({"removed": sum(a["removed"] for _, a in answers), "workers": len(answers),
                  "missing": missing})


async def stats(request: web.Request) -> web.Response:
    answers, missing = await request.app[NODE].gather("stats")
    merged = merge([answer for _, answer in answers])
    return _json({
        "time": round(time.time(), 3),
        "epoch": ".".join(f"{a['worker']}:{a['pid']}" for _, a in answers),
        "workers": len(answers),
        "missing": missing,
        "buckets_ms": list(BUCKETS_MS),
        **merged,
    })


async def ready(request: web.Request) -> web.Response:
    node = request.app[NODE]
    local = node.local
    if local.draining or node.stopping:
        raise ServiceUnavailable("draining")
    if local.running is None:
        raise ServiceUnavailable("starting: the configuration is not serving yet")
    return _json({"ready": True, "generation": node.generation()})


async def healthz(request: web.Request) -> web.Response:
    return _json({"alive": True})


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise NotFound("the dashboard is not installed")
    return _file(page)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    base = STATIC_DIR.resolve()
    for candidate in (base / name, base / "static" / name):
        try:
            found = candidate.resolve()
            if base in found.parents and found.is_file():
                return _file(found)
        except (OSError, ValueError):  # a NUL byte, a name too long
            break
    raise NotFound("no such dashboard file")


def _file(path: Path) -> web.StreamResponse:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={
        "Content-Type": content_type, "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def make_app(node: SingleNode) -> web.Application:
    app = web.Application(middlewares=[problems, guard], client_max_size=64 * 1024)
    app[NODE] = node
    router = app.router
    router.add_get("/status", status)
    router.add_get("/routes", routes)
    router.add_get("/upstreams", upstreams)
    router.add_get("/plugins", plugins)
    router.add_get("/metrics", metrics)
    router.add_post("/reload", reload)
    router.add_delete("/cache", purge)
    router.add_get("/stats", stats)
    router.add_get("/ready", ready)
    router.add_get("/healthz", healthz)
    router.add_get("/", index)
    router.add_get("/static/{name:.+}", static)
    return app


__all__ = ["NODE", "STATIC_DIR", "make_app", "token_matches"]
