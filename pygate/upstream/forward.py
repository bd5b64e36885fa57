"""The streaming reverse proxy: upstream calls for client requests.

:func:`send` makes one upstream call (target choice, retries, breaker
accounting, error mapping) and is shared by proxy and aggregate routes.
:func:`exchange` proxies a client request through it: the request body streams
from the client through a counting generator that enforces
``gateway.max_body``, the response body streams back chunk by chunk. Upstream
failures map to 502 (refused, reset, malformed) and 504 (timeouts); nothing
about the upstream's address reaches the client.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from ..chain import invalid_request
from ..context import Context, UpstreamRequest
from ..errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
)
from ..sanitize import strip_hop_by_hop
from . import Target, Upstream
from .client import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    InvalidHead,
    ProtocolError,
    TlsError,
    UpstreamError,
    UpstreamResponse,
)

log = structlog.get_logger("pygate")

SMALL_BODY = 64 * 1024

class Streamer(Protocol):
    """Writes a response's body after its head; or lets go of it, never written.

    The pipeline calls exactly one of the two, or ``discard`` after the call
    (then a no-op): a body whose response is never sent (a ``post_response``
    hook refused it, the client left before the head went out) must still give
    its upstream connection back.
    """

    async def __call__(self, sent: web.StreamResponse) -> None: ...

    def discard(self) -> None: ...


class BodyLimit:
    """Streams the client's body upstream, counting bytes, refusing past ``limit``."""

    __slots__ = ("ctx", "limit", "reader")

    def __init__(self, reader: aiohttp.StreamReader, limit: int, ctx: Context) -> None:
        self.reader = reader
        self.limit = limit
        self.ctx = ctx

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a client that breaks it off is a client's error.

        :raise GatewayError: 413 past ``limit``; 400 for a body whose framing
            breaks mid-stream; 499 when the client's connection ends before its
            body does (aiohttp then raises whatever it has: a reset, or a plain
            ``RuntimeError``), so that the upstream is never blamed for it.
        """
        total = 0
        chunks = self.reader.iter_any().__aiter__()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except HttpProcessingError as exc:
                raise BadRequest("malformed request body", close=True) from exc
            except Exception as exc:
                raise GatewayError("the client closed the connection", status=499) from exc
            total += len(chunk)
            self.ctx.bytes_in = total
            if total > self.limit:
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


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Answers that count against a target and are retried (the contract's 502/503/504).
FAILED_STATUSES = frozenset({502, 503, 504})
# ctx.state key: the targets tried, in order, when a request was retried.
TRIED = "pygate.tried_targets"


async def send(
    upstream: Upstream,
    ctx: Context,
    upstream_request: UpstreamRequest,
    *,
    deadline: float,
    data: object = None,
    body: BodyLimit | None = None,
) -> UpstreamResponse:
    """One upstream call with retries; the response's headers have arrived when it returns.

    The target comes from the upstream's balancer. Idempotent requests whose
    body can be sent again (none, or bytes) are retried up to ``retries``
    times, on another target when there is one, after a refused connection, a
    connect timeout, a connection closed or reset before the response, or a
    502/503/504 answer, while ``deadline`` is ahead. After a failed TLS handshake
    (a certificate that does not verify, or ours refused) only a target not tried
    yet is tried: the same one would fail the same way. A 502/503/504 left when
    the attempts run out is returned as it is. Every outcome feeds the target's
    breaker; the target counts the request in ``active`` until the returned
    response is released or closed. ``upstream_request`` gets the call's outcome
    (``started``, ``elapsed``, ``status``, ``sent_to``, ``error``:
    :class:`pygate.context.UpstreamRequest`); ``ctx.upstream_time`` is its ``elapsed``
    (the seconds from the first attempt to the response head, or the last failure).

    :param deadline: loop time by which the response headers must have arrived (504).
    :param data: what to send as the body (bytes, an async iterator) or ``None``.
    :param body: the client-body stream inside ``data``, to tell 413 from 502; a
        request with one is never retried (its body is consumed).
    :raise GatewayError: 502, 503 or 504 as PRODUCT.md section 4 says.
    """
    headers = upstream_request.headers
    if isinstance(data, str):
        data = data.encode()
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    method = upstream_request.method
    retries = upstream.retries if (
        method in IDEMPOTENT and body is None and _replayable(data)) else 0
    upstream_request.started = time.monotonic()
    try:
        target = upstream.pick(ctx, headers=headers)
    except ServiceUnavailable as exc:
        upstream_request.error = exc
        raise
    tried: list[Target] = []
    path = upstream_request.target
    tls_failed = False
    loop = asyncio.get_running_loop()
    while True:
        ctx.target = target.label
        pool = target.pool
        assert pool is not None, "upstream used before the gateway started"
        target.active += 1
        response: UpstreamResponse | None = None
        error: GatewayError | None = None
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                response = await pool.request(method, path, headers.items(), data)  # type: ignore[arg-type]
        except InvalidHead as exc:  # nothing was sent
            target.active -= 1
            upstream.abandoned(target, ctx)
            raise refused_head(upstream_request, ctx, upstream, str(exc)) from None
        except Exception as exc:
            target.active -= 1
            error, retryable, blame = _classify(exc, upstream, timer.expired())
            if isinstance(exc, TlsError):
                tls_failed = True
                log.warning("upstream TLS handshake failed", request_id=ctx.request_id,
                            upstream=upstream.name, target=target.label, reason=exc.detail)
            if blame is None:
                upstream.abandoned(target, ctx)
            else:
                upstream.failed(target, ctx, blame)
            reason = blame or error.detail
        except BaseException:  # cancelled (client gone, aggregate timeout), or a bug
            target.active -= 1
            upstream.abandoned(target, ctx)
            raise
        else:
            response.on_release = target.finished
            status = response.status
            if status not in FAILED_STATUSES:
                upstream.succeeded(target, ctx)
                upstream_request.elapsed = ctx.upstream_time = (
                    time.monotonic() - upstream_request.started)
                upstream_request.status = status
                upstream_request.sent_to = target.label
                return response
            reason = f"status {status}"
            upstream.failed(target, ctx, reason)
            retryable = True
        tried.append(target)
        if retryable and len(tried) <= retries and loop.time() < deadline:
            following = _retry_target(upstream, ctx, headers, tried, again=not tls_failed)
            if following is not None:
                log.info("upstream retry", request_id=ctx.request_id, upstream=upstream.name,
                         target=target.label, next_target=following.label, reason=reason)
                if response is not None:
                    response.release()
                ctx.state[TRIED] = [*(t.label for t in tried), following.label]
                target = following
                continue
        upstream_request.elapsed = ctx.upstream_time = (
            time.monotonic() - upstream_request.started)
        upstream_request.sent_to = target.label
        if response is not None:
            upstream_request.status = response.status
            return response
        assert error is not None
        upstream_request.error = error
        raise error


def refused_head(upstream_request: UpstreamRequest, ctx: Context, upstream: Upstream,
                 problem: str) -> Exception:
    """The error for a request head that would inject bytes (nothing is sent): a
    failure of the plugin whose ``transform_request`` shaped it last, else a defect
    of ours; 500 either way, logged."""
    if upstream_request.shaped_by is not None:
        return invalid_request(upstream_request.shaped_by, ctx, problem)
    log.error("upstream request head refused", request_id=ctx.request_id,
              upstream=upstream.name, problem=problem)
    return GatewayError("the gateway could not process this request", status=500)


def _replayable(data: object) -> bool:
    return data is None or isinstance(data, bytes)


def _retry_target(upstream: Upstream, ctx: Context, headers: CIMultiDict[str],
                  tried: list[Target], *, again: bool = True) -> Target | None:
    """Another target than those tried when there is one, else (with ``again``) the same
    one again."""
    try:
        return upstream.pick(ctx, frozenset(tried), headers=headers)
    except ServiceUnavailable:
        if not again:
            return None
    try:
        return upstream.pick(ctx, headers=headers)
    except ServiceUnavailable:
        return None


def _classify(exc: BaseException, upstream: Upstream, expired: bool
              ) -> tuple[GatewayError, bool, str | None]:
    """A failed attempt -> (the client's error, whether to retry, the target's fault or None).

    Retried: refused connections, connect timeouts, connections closed or reset
    before the response, failed TLS handshakes (on another target only). Not
    retried: the request's own deadline, a read timeout (the upstream may be
    working on it), a malformed response, and failures of the client's own body
    (too large, cut short, broken framing: :meth:`BodyLimit.chunks` raises those
    as GatewayErrors, the first case below), which are not the target's fault
    either.
    """
    name = upstream.label
    if isinstance(exc, GatewayError):
        return exc, False, None
    if expired:
        return GatewayTimeout(f"{name} did not answer in time"), False, "timed out"
    if isinstance(exc, ConnectTimeout):
        return GatewayTimeout(f"{name} did not accept the connection in time"), True, \
            "connect timeout"
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"{name} did not answer in time"), False, "read timeout"
    if isinstance(exc, TlsError):  # the reason stays in the logs: it names hosts
        return BadGateway(f"{name} failed the TLS handshake"), True, \
            f"TLS handshake failed: {exc.detail}"
    if isinstance(exc, ConnectError):
        return BadGateway(f"{name} refused the connection"), True, "connection refused"
    cause = exc.__cause__
    if isinstance(cause, GatewayError):
        return cause, False, None
    reason = _reason(exc)
    retryable = isinstance(exc, Disconnected | ConnectionError)
    return BadGateway(f"{name} failed: {reason}"), retryable, reason


async def exchange(
    request: web.BaseRequest,
    ctx: Context,
    upstream: Upstream,
    upstream_request: UpstreamRequest,
    body: BodyLimit | None = None,
    *,
    max_body: int,
    deadline: float,
) -> tuple[web.StreamResponse, Streamer | None]:
    """Proxy the request; return the unsent response and its body streamer.

    The streamer is ``None`` when the body was read whole already (a plugin asked
    for it through ``ctx.capture_body``): the response is then a ``web.Response``.

    :param body: what streams the client's body, when one is given (a mirror's
        :class:`pygate.mirror.TeeBody`; only for a body that streams from the client,
        ``upstream_request.body`` being None); else a :class:`BodyLimit` made here.
    """
    data: object = upstream_request.body
    if data is None and request.body_exists:
        if body is None:
            body = BodyLimit(request.content, max_body, ctx)
        data = body.chunks()
    try:
        with ClientWatch(request):
            response = await send(upstream, ctx, upstream_request, deadline=deadline,
                                  data=data, body=body)
    except ClientGone:
        raise GatewayError("the client closed the connection", status=499) from None

    headers = response.headers
    strip_hop_by_hop(headers)
    headers["X-Request-ID"] = ctx.request_id
    length = response.content_length
    prefix: list[bytes] = []
    capture = ctx.capture_body
    if (capture and request.method != "HEAD" and (length is None or length <= capture)
            and not streaming(headers)):
        whole, prefix = await _read_up_to(response, capture)
        if whole is not None:
            response.release()
            ctx.bytes_out = len(whole)
            headers.popall("Content-Length", None)
            return web.Response(status=response.status, reason=response.reason,
                                headers=headers, body=whole), None
    out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
    return out, ProxiedBody(request, ctx, response, prefix)


STREAMING_TYPES = frozenset({"text/event-stream", "application/x-ndjson",
                             "multipart/x-mixed-replace"})
"""Media types whose bodies are streams by nature: never read whole for a plugin
(``ctx.capture_body``), so events reach the client as the upstream sends them."""


def streaming(headers: CIMultiDict[str]) -> bool:
    """Whether the response's Content-Type is one of :data:`STREAMING_TYPES`."""
    kind = headers.get("Content-Type")
    return kind is not None and kind.partition(";")[0].strip().lower() in STREAMING_TYPES


class ProxiedBody:
    """The :class:`Streamer` of a proxied response: the upstream's body, chunk by chunk."""

    __slots__ = ("ctx", "prefix", "request", "response")

    def __init__(self, request: web.BaseRequest, ctx: Context, response: UpstreamResponse,
                 prefix: list[bytes]) -> None:
        self.request = request
        self.ctx = ctx
        self.response = response
        self.prefix = prefix  # chunks already read (while trying to capture the body)

    async def __call__(self, sent: web.StreamResponse) -> None:
        response, ctx, prefix = self.response, self.ctx, self.prefix
        length = response.content_length
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
                with ClientWatch(self.request):
                    async for chunk in response:
                        total += len(chunk)
                        ctx.bytes_out = total
                        await sent.write(chunk)
            ctx.bytes_out = total
            await sent.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, ClientGone):
            ctx.error = "client disconnected"
            response.close()
            return
        except (UpstreamError, TimeoutError) as exc:
            # The status line is out: the only honest signal left is a cut connection.
            ctx.error = f"upstream failed mid-body: {_reason(exc)}"
            response.close()
            if self.request.transport is not None:
                self.request.transport.abort()  # never a clean end: PRODUCT.md 4, item 10
            log.info("upstream body cut short; client connection aborted",
                     request_id=ctx.request_id, upstream=ctx.upstream, target=ctx.target,
                     bytes_out=ctx.bytes_out)
            return
        finally:
            response.release()

    def discard(self) -> None:
        # Unread (or partly read) body: the connection cannot carry another request.
        self.response.close()


async def _read_up_to(response: UpstreamResponse, limit: int
                      ) -> tuple[bytes | None, list[bytes]]:
    """The whole body when it is at most ``limit`` bytes, else ``(None, chunks read)``."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None, chunks
    except (UpstreamError, TimeoutError) as exc:
        response.close()
        raise BadGateway(f"upstream failed mid-body: {_reason(exc)}") from None
    return b"".join(chunks), []


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Disconnected):
        return "connection closed without a complete response"
    if isinstance(exc, ConnectionError | aiohttp.ClientConnectionResetError):
        return "connection reset"
    if isinstance(exc, ProtocolError):
        return "malformed response"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, UpstreamError):
        return exc.reason
    return type(exc).__name__


# How often a proxy waiting on its upstream checks that its client is still there.
CLIENT_CHECK = 0.25


class ClientGone(Exception):
    """The client's connection closed while the gateway waited on the upstream."""


class ClientWatch:
    """Cancels the awaits inside it once the client's connection is gone.

    aiohttp does not cancel a handler whose client disconnects (pygate's log
    hooks must still run), so a proxy waiting on a silent upstream (for the
    response headers, or between two Server-Sent Events) would otherwise keep
    that upstream request and its pooled connection until the upstream spoke
    again. One timer per event loop (:class:`_Sweep`) looks at the transports
    of the watched clients every :data:`CLIENT_CHECK` seconds, so a watch costs
    a dict entry, not a timer; once a client's connection is gone its waiting
    task is cancelled, and leaving the block raises :class:`ClientGone` instead
    of that cancellation.
    """

    __slots__ = ("_cancelling", "_request", "_sweep", "_task", "gone")

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self._task: asyncio.Task[object] | None = None
        self._sweep: _Sweep | None = None
        self._cancelling = 0
        self.gone = False

    def __enter__(self) -> ClientWatch:
        task = self._task = asyncio.current_task()
        if task is not None:
            self._cancelling = task.cancelling()
            loop = task.get_loop()
            sweep = _SWEEPS.get(loop)
            if sweep is None:
                sweep = _SWEEPS[loop] = _Sweep(loop)
            self._sweep = sweep
            sweep.add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self._sweep is not None:
            self._sweep.watched.pop(self, None)
        if self.gone and self._task is not None:
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise ClientGone from exc

    def check(self) -> bool:
        """Cancel the watched task if the client is gone; whether it is."""
        transport = self._request.transport
        if transport is not None and not transport.is_closing():
            return False
        self.gone = True
        assert self._task is not None
        self._task.cancel()
        return True


class _Sweep:
    """The timer of one event loop that checks every watched client, while there are any."""

    __slots__ = ("__weakref__", "handle", "loop", "watched")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: dict[ClientWatch, None] = {}
        self.handle: asyncio.TimerHandle | None = None

    def add(self, watch: ClientWatch) -> None:
        self.watched[watch] = None
        if self.handle is None:
            self.handle = self.loop.call_later(CLIENT_CHECK, self.run)

    def run(self) -> None:
        self.handle = None
        for watch in list(self.watched):
            if watch.check():
                del self.watched[watch]
        if self.watched:
            self.handle = self.loop.call_later(CLIENT_CHECK, self.run)


_SWEEPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweep] = (
    weakref.WeakKeyDictionary())
