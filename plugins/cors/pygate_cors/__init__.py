"""cors: Cross-Origin Resource Sharing, with preflights answered by the gateway.

``pre_route`` answers preflights (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) with 204 and the ``Access-Control-Allow-*``
headers, or refuses them with 403, without calling the upstream; it runs before
the route's ``methods`` are enforced, so routes need not list ``OPTIONS``.
``post_response`` adds ``Access-Control-Allow-Origin`` (and ``-Credentials``,
``-Expose-Headers``, ``Vary: Origin``) to every other response for an allowed
origin, problem documents included.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Forbidden, hookimpl

from .config import CorsConfig
from .policy import decorate, is_preflight, preflight

__version__ = "0.1.0"

PRIORITY = 2000
PREFLIGHT = "cors.preflight"  # ctx.state key: this request was a preflight


@hookimpl
def config_schema() -> type[BaseModel]:
    return CorsConfig


@hookimpl
def pre_route(request: web.BaseRequest, ctx: Context) -> web.StreamResponse | None:
    headers = request.headers
    if not is_preflight(request.method, headers):
        return None
    ctx.state[PREFLIGHT] = True
    config: CorsConfig = ctx.config
    answer = preflight(config.policy, headers["Origin"],
                       headers["Access-Control-Request-Method"],
                       headers.get("Access-Control-Request-Headers"))
    if answer.headers is None:
        raise Forbidden(answer.refusal or "CORS preflight refused")
    return web.Response(status=204, headers=answer.headers)


@hookimpl
def post_response(request: web.BaseRequest, ctx: Context, response: web.StreamResponse) -> None:
    if ctx.state.get(PREFLIGHT):
        return
    config: CorsConfig = ctx.config
    decorate(config.policy, request.headers.get("Origin"), response.headers)


__all__ = ["PRIORITY", "CorsConfig", "config_schema", "post_response", "pre_route"]
