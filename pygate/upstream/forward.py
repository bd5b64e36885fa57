"""The streaming reverse proxy: upstream calls for client requests.

:func:`send` makes one upstream call (target choice, error mapping; the seam
for retries and the breaker) and is shared by proxy and aggregate routes.
:func:`exchange` proxies a client request through it: the request body streams
from the client through a counting generator that enforces
``gateway.max_body``, the response body streams back chunk by chunk. Upstream
failures map to 502 (refused, reset, malformed) and 504 (timeouts); nothing
about the upstream's address reaches the client.
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

Streamer = Callable[[web.StreamResponse], Awaitable[None]]


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


async def send(
    upstream: Upstream,
    ctx: Context,
    upstream_request: UpstreamRequest,
    *,
    deadline: float,
    data: object = None,
    body: BodyLimit | None = None,
) -> aiohttp.ClientResponse:
    """One upstream call; the response's headers have arrived when it returns.

    :param deadline: loop time by which the response headers must have arrived (504).
    :param data: what to send as the body (bytes, an async iterator) or ``None``.
    :param body: the client-body stream inside ``data``, to tell 413 from 502.
    :raise GatewayError: 502, 503 or 504 as PRODUCT.md section 4 says.
    """
    session = upstream.session
    assert session is not None, "upstream used before the gateway started"
    target = upstream.pick(ctx)
    ctx.target = target.label
    target.active += 1
    try:
        async with asyncio.timeout_at(deadline):
            return await session.request(
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


async def exchange(
    request: web.BaseRequest,
    ctx: Context,
    upstream: Upstream,
    upstream_request: UpstreamRequest,
    *,
    max_body: int,
    deadline: float,
) -> tuple[web.StreamResponse, Streamer | None]:
    """Proxy the request; return the unsent response and its body streamer.

    The streamer is ``None`` when the body was read whole already (a plugin asked
    for it through ``ctx.capture_body``): the response is then a ``web.Response``.
    """
    body: BodyLimit | None = None
    data: object = upstream_request.body
    if data is None and request.body_exists:
        body = BodyLimit(request.content, max_body, ctx)
        data = body.chunks()
    response = await send(upstream, ctx, upstream_request, deadline=deadline, data=data,
                          body=body)

    headers = CIMultiDict(response.headers)
    strip_hop_by_hop(headers)
    headers["X-Request-ID"] = ctx.request_id
    length = response.content_length
    prefix: list[bytes] = []
    capture = ctx.capture_body
    if capture and request.method != "HEAD" and (length is None or length <= capture):
        whole, prefix = await _read_up_to(response, capture)
        if whole is not None:
            response.release()
            ctx.bytes_out = len(whole)
            headers.popall("Content-Length", None)
            return web.Response(status=response.status, reason=response.reason,
                                headers=headers, body=whole), None
    out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)

    async def stream(sent: web.StreamResponse) -> None:
        try:
            total = 0
            for chunk in prefix:
                total += len(chunk)
                await sent.write(chunk)
            if not prefix and length is not None and length <= SMALL_BODY:
                chunk = await response.read()
                total = len(chunk)
                await sent.write(chunk)
            else:
                async for chunk in response.content.iter_any():
                    total += len(chunk)
                    ctx.bytes_out = total
                    await sent.write(chunk)
            ctx.bytes_out = total
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


async def _read_up_to(response: aiohttp.ClientResponse, limit: int
                      ) -> tuple[bytes | None, list[bytes]]:
    """The whole body when it is at most ``limit`` bytes, else ``(None, chunks read)``."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None, chunks
    except (aiohttp.ClientError, TimeoutError) as exc:
        response.close()
        raise BadGateway(f"upstream failed mid-body: {_reason(exc)}") from None
    return b"".join(chunks), []


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
