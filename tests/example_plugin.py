"""A tiny plugin used by the core's own tests: one hook of every kind.

``stamp`` adds a header upstream and one on the response, authenticates callers
that send ``X-Demo-User``, refuses ``X-Demo-Block``, and records what it saw.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from pygate import Context, Forbidden, Identity, UpstreamRequest, hookimpl

PRIORITY = 100


class StampConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = "yes"
    answer_path: str | None = None


seen: list[dict[str, Any]] = []


@hookimpl
def config_schema() -> type[BaseModel]:
    return StampConfig


@hookimpl
def pre_route(request: web.BaseRequest, ctx: Context) -> web.Response | None:
    config: StampConfig = ctx.config
    if config.answer_path is not None and request.path == config.answer_path:
        return web.Response(text="answered by stamp")
    return None


@hookimpl
async def authenticate(request: web.BaseRequest) -> Identity | None:
    user = request.headers.get("X-Demo-User")
    return Identity(id=user, roles=("demo",), source="stamp") if user else None


@hookimpl
def admit(request: web.BaseRequest, ctx: Context) -> None:
    if "X-Demo-Block" in request.headers:
        raise Forbidden("blocked by stamp")


@hookimpl
async def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
    upstream_request.headers["X-Stamp"] = ctx.config.value
    if ctx.identity is not None:
        upstream_request.headers["X-Stamp-User"] = ctx.identity.id


@hookimpl
def post_response(ctx: Context, response: web.StreamResponse) -> None:
    response.headers["X-Stamped"] = ctx.config.value


@hookimpl
def log(ctx: Context, record: dict[str, Any]) -> None:
    seen.append(record)
