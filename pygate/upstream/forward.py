"""The streaming reverse proxy: one upstream exchange for one client request.

Request bodies stream from the client to the upstream through a counting
generator that enforces ``gateway.max_body``; response bodies stream back
chunk by chunk. Upstream failures map to 502 (refused, reset, malformed) and
504 (timeouts); nothing about the upstream's address reaches the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..context import Context, UpstreamRequest
from ..errors import BadGateway, GatewayError, GatewayTimeout, PayloadTooLarge
from ..sanitize import strip_hop_by_hop
from . import Target, Upstream

SMALL_BODY = 64 * 1024


class BodyLimit:
    """Streams the client's body upstream, counting bytes, refusing past ``limit``."""

    __slots__ = ("ctx", "exceeded", "limit", "reader")

    def __init__(self, reader: aiohttp.StreamReader, limit: int, ctx: Context) -> None:
        self.reader = reader
        self.limit = limit
        self.ctx = ctx
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self.reader.iter_any():
            total += len(chunk)
            self.ctx.bytes_in = total
            if total > self.limit:
                self.exceeded = True
                raise PayloadTooLarge("request body exceeds the gateway's max_body")
            yield chunk


def target_url(target: Target, upstream_request: UpstreamRequest) -> URL:
    base = target.url
    return URL.build(
        scheme=base.scheme,
        host=base.raw_host or "",
        port=base.explicit_port,
        path=upstream_request.path,
        query_string=upstream_request.query,
        encoded=True,
    )


Streamer = Callable[[web.StreamResponse], Awaitable[None]]


async def exchange(
    request: web.BaseRequest,
    ctx: Context,
    upstream: Upstream,
    upstream_request: UpstreamRequest,
    *,
    max_body: int,
    deadline: float,
) -> tuple[web.StreamResponse, Streamer]:
    """Send the request upstream; return the unsent response and its body streamer.

    :param deadline: the loop time by which response headers must have arrived.
    """
    session = upstream.session
    assert session is not None, "upstream used before the gateway started"
    target = upstream.pick(ctx)
    ctx.target = target.label
    body: BodyLimit | None = None
    data: object = upstream_request.body
    if data is None and request.body_exists:
        body = BodyLimit(request.content, max_body, ctx)
        data = body.chunks()
    target.active += 1
    try:
        async with asyncio.timeout_at(deadline):
            response = await session.request(
                upstream_request.method,
                target_url(target, upstream_request),
                headers=upstream_request.headers,
                data=data,
                allow_redirects=False,
            )
    except GatewayError:
        raise
    except TimeoutError:
        raise GatewayTimeout(f"{upstream.label} did not answer in time") from None
    except aiohttp.ClientConnectorError:
        raise BadGateway(f"{upstream.label} refused the connection") from None
    except aiohttp.ClientError as exc:
        if body is not None and body.exceeded:
            raise PayloadTooLarge("request body exceeds the gateway's max_body") from None
        cause = exc.__cause__
        if isinstance(cause, GatewayError):
            raise cause from None
        raise BadGateway(f"{upstream.label} failed: {_reason(exc)}") from None
    finally:
        target.active -= 1

    headers = CIMultiDict(response.headers)
    strip_hop_by_hop(headers)
    headers["X-Request-ID"] = ctx.request_id
    out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
    length = response.content_length

    async def stream(sent: web.StreamResponse) -> None:
        try:
            if length is not None and length <= SMALL_BODY:
                chunk = await response.read()
                ctx.bytes_out = len(chunk)
                await sent.write(chunk)
            else:
                total = 0
                async for chunk in response.content.iter_any():
                    total += len(chunk)
                    ctx.bytes_out = total
                    await sent.write(chunk)
            await sent.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            ctx.error = "client disconnected"
            response.close()
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line is out: the only honest signal left is a cut connection.
            ctx.error = f"upstream failed mid-body: {_reason(exc)}"
            response.close()
            if request.transport is not None:
                request.transport.close()
            return
        finally:
            response.release()

    return out, stream


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without a response"
    if isinstance(exc, aiohttp.ClientOSError):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "malformed body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "malformed response"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__
