"""What the hooks do with a body: read it (request side), decode, edit, encode, log.

The request side edits the client's JSON body on its way to a proxied upstream
(read whole, within ``gateway.max_body``, and sent as ``upstream_request.body``);
the response side edits the buffered upstream body the core hands to
``transform_response``. Bodies over ``max_body``, compressed or not JSON pass
untouched. A request body that says it is JSON and is not gets 400 (passing it on
would step around ``set`` and ``remove``); a response body that is not JSON passes
untouched (logged).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from pygate.plugin import (
    BadRequest,
    Context,
    MissingValue,
    UpstreamRequest,
    read_body,
)

from .body import MISSING
from .codec import NotJson, decode, encode, is_encoded, is_json, utf8_content_type
from .config import Edits, TransformConfig

NAME = "transform"
THREAD_ABOVE = 256 * 1024
"""Bodies larger than this are decoded and encoded in a worker thread, so that other
requests are not held up."""

log = structlog.get_logger("pygate")


def values(edits: Edits, request: web.BaseRequest, ctx: Context) -> list[Any]:
    """The ``set`` values for this request (:data:`MISSING` where a placeholder has none)."""
    out: list[Any] = []
    for template in edits.templates:
        try:
            out.append(template.render(request, ctx))
        except MissingValue:
            out.append(MISSING)
    return out


def edit(raw: bytes, edits: Edits, set_values: list[Any]) -> bytes | None:
    """``raw`` decoded, edited and encoded again; ``None`` when the edits changed
    nothing (the body then goes on as it came).

    :raise NotJson: ``raw`` is not a JSON document pygate can read and write.
    """
    document = decode(raw)
    if not edits.operations.apply(document, set_values):
        return None
    return encode(document)


async def edited(raw: bytes, edits: Edits, set_values: list[Any]) -> bytes | None:
    if len(raw) > THREAD_ABOVE:
        return await asyncio.to_thread(edit, raw, edits, set_values)
    return edit(raw, edits, set_values)


def _where(ctx: Context) -> dict[str, Any]:
    return {"plugin": NAME, "request_id": ctx.request_id,
            "route": ctx.route.name if ctx.route is not None else None}


# ---------------------------------------------------------------------------
# Request side


async def transform_request(request: web.BaseRequest, ctx: Context,
                            upstream_request: UpstreamRequest) -> None:
    config: TransformConfig = ctx.config
    if not config.response.operations.empty:
        # A compressed answer could not be edited: ask for the plain one.
        upstream_request.headers["Accept-Encoding"] = "identity"
    edits = config.request
    if edits.operations.empty or upstream_request.upstream != ctx.upstream:
        return  # nothing to do, or a call of an aggregate or GraphQL route (no client body)
    headers = upstream_request.headers
    content_type = headers.get("Content-Type")
    if not is_json(content_type):
        return
    if is_encoded(headers):
        log.warning("compressed JSON request body passed untouched", **_where(ctx),
                    content_encoding=headers.get("Content-Encoding"))
        return
    body = upstream_request.body
    if body is None:
        if not request.body_exists:
            return
        length = request.content_length
        if length is not None and length > config.max_body:
            _over(ctx, "request", length, config.max_body)
            return
        body = await read_body(request, ctx)
        upstream_request.body = body  # the client's stream is spent: send what was read
    if not body:
        return
    if len(body) > config.max_body:
        _over(ctx, "request", len(body), config.max_body)
        return
    try:
        changed = await edited(body, edits, values(edits, request, ctx))
    except NotJson as exc:
        raise BadRequest(f"the request body is not JSON this gateway can transform: "
                         f"{exc.reason}") from None
    if changed is None:
        return
    upstream_request.body = changed
    assert content_type is not None
    fixed = utf8_content_type(content_type)
    if fixed != content_type:
        headers["Content-Type"] = fixed


# ---------------------------------------------------------------------------
# Response side


async def transform_response(request: web.BaseRequest, ctx: Context,
                             response: web.Response) -> None:
    config: TransformConfig = ctx.config
    edits = config.response
    if edits.operations.empty:
        return
    headers = response.headers
    content_type = headers.get("Content-Type")
    if not is_json(content_type):
        return
    body = response.body
    if not isinstance(body, bytes | bytearray) or not body:
        return
    if is_encoded(headers):
        log.warning("compressed JSON response passed untouched", **_where(ctx),
                    content_encoding=headers.get("Content-Encoding"))
        return
    if len(body) > config.max_body:  # the core checks it too; a body another plugin grew
        _over(ctx, "response", len(body), config.max_body)
        return
    try:
        changed = await edited(bytes(body), edits, values(edits, request, ctx))
    except NotJson as exc:
        log.info("response body is not JSON: passed untouched", **_where(ctx),
                 reason=exc.reason)
        return
    if edits.varies:  # the body depends on the request: no validator fits every caller
        headers.popall("ETag", None)
    if changed is None:
        return
    response.body = changed
    assert content_type is not None
    fixed = utf8_content_type(content_type)
    if fixed != content_type:
        headers["Content-Type"] = fixed


def _over(ctx: Context, side: str, size: int, limit: int) -> None:
    log.info(f"{side} body over the transform max_body: passed untouched", **_where(ctx),
             size=size, max_body=limit)
