"""The client's request body read whole, once, by whoever needs it before the upstream call.

A plugin that must see the body (``validate``, ``transform``) reads it with
:func:`read_body` (``pygate.plugin.read_body``); the bytes stay on ``ctx.body``, so a
second reader gets the same bytes, and the route sends them on: a proxy route as the
upstream request's body (unless a ``transform_request`` hook set another), a GraphQL
route as its request. Without a reader nothing changes: bodies stream.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from .context import Context
from .errors import BadRequest, GatewayError, PayloadTooLarge


def expects_continue(request: web.BaseRequest) -> bool:
    """An HTTP/1.1 client waiting for ``100 Continue`` before it sends its body."""
    return (request.version == HttpVersion11
            and request.headers.get("Expect", "").lower() == "100-continue")


async def read_body(request: web.BaseRequest, ctx: Context) -> bytes:
    """The client's body, whole, within the gateway's ``max_body``; read once per request
    (kept on ``ctx.body``), ``100 Continue`` sent first to a client that waits for it.

    :raise GatewayError: 413 past ``max_body`` (the connection then closes), 400 for a
        body whose framing breaks, 499 for a client that goes away mid-body.
    """
    body = ctx.body
    if body is not None:
        return body
    limit = ctx.gateway.max_body
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge("request body exceeds the gateway's max_body")
    content = request.content
    try:
        if expects_continue(request):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        data = bytearray(content.read_nowait(-1))  # a small body came with its head
        while not content.is_eof():
            if len(data) > limit:
                break
            data += await content.readany()
        if len(data) > limit:
            raise PayloadTooLarge("request body exceeds the gateway's max_body")
    except GatewayError:
        raise
    except HttpProcessingError:
        raise BadRequest("malformed request body", close=True) from None
    except Exception:
        raise GatewayError("the client closed the connection", status=499) from None
    ctx.bytes_in = len(data)
    body = ctx.body = bytes(data)
    return body
