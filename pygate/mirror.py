"""Traffic mirroring: fire-and-forget copies of a route's requests to another upstream.

A proxy route with ``[routes.mirror]`` (PRODUCT.md section 11) sends a copy of
``percent`` of its requests to the mirror upstream: the method, the path and query
as the route's upstream gets them, the headers after ``transform_request`` (the same
``X-Request-ID``) and the body. The mirror's answer is read and dropped; nothing of
it reaches the client, whose request never waits for it.

- **Bodies** are copied as they stream to the route's upstream (:class:`TeeBody`
  keeps a reference to each chunk the upstream is sent, never more than
  ``max_body`` bytes), and the copy leaves once the body has ended, with its
  ``Content-Length``. A body larger than ``max_body`` (by its ``Content-Length``,
  or once more than that has arrived) is not mirrored; nor is a body the route's
  upstream did not read to its end.
- **Bounded**: at most the mirror upstream's ``max_connections`` copies are in
  flight (per worker); past that, copies are dropped and counted
  (:class:`Copies`: the admin listener's ``/upstreams``, and a warning at most
  every :data:`WARN_EVERY` seconds). A copy takes at most ``gateway.timeout``,
  its answer's body included.
- **Its own upstream**: a copy goes through :func:`pygate.upstream.forward.send` on
  the mirror upstream, with a context of its own: that upstream's balancer,
  retries and breaker, never those of the route's upstream, and never the
  client's access record.
- **Shutdown**: the drain does not wait for copies; when the mirror upstream
  closes, copies still in flight get :data:`MIRROR_GRACE` seconds, then are cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from .canary import Split
from .context import Context, UpstreamRequest
from .upstream.forward import BodyLimit, send

if TYPE_CHECKING:
    from .config.traffic import MirrorConfig
    from .upstream import Upstream

log = structlog.get_logger("pygate")

MIRROR_GRACE = 1.0
"""At shutdown, how long copies still in flight may take before they are cut."""

WARN_EVERY = 10.0
"""The least time between two warnings about dropped copies, per mirror upstream."""


class Copies:
    """The mirror copies sent to one upstream by this process: bounded, and counted.

    Held by the upstream (``Upstream.mirrored``), so every route mirroring to it
    shares the bound, and a reload that keeps the upstream keeps the counts and the
    copies in flight. ``describe()`` is what the admin listener's ``/upstreams``
    shows as the upstream's ``mirror``.
    """

    __slots__ = ("_unreported", "_warned", "dropped", "failed", "in_flight", "limit", "name",
                 "sent", "tasks", "too_large")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit  # the upstream's max_connections
        self.in_flight = 0
        self.sent = 0  # copies the mirror answered (whatever the status)
        self.failed = 0  # copies without an answer: refused, reset, timed out, no target
        self.dropped = 0  # copies not sent: `limit` were in flight
        self.too_large = 0  # requests not mirrored: a body over the route's max_body
        self.tasks: set[asyncio.Task[None]] = set()
        self._warned = 0.0
        self._unreported = 0

    def reserve(self) -> bool:
        """A place for one more copy; False (the copy is dropped, counted) at the limit."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            return True
        self.dropped += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            log.warning("mirror copies dropped: too many in flight", upstream=self.name,
                        dropped=self._unreported, limit=self.limit)
            self._warned = now
            self._unreported = 0
        return False

    def release(self) -> None:
        self.in_flight -= 1

    def describe(self) -> dict[str, int]:
        return {"limit": self.limit, "in_flight": self.in_flight, "sent": self.sent,
                "failed": self.failed, "dropped": self.dropped, "too_large": self.too_large}

    async def settle(self, within: float = MIRROR_GRACE) -> None:
        """Let the copies in flight finish for at most ``within`` seconds, then cut them."""
        tasks = list(self.tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.info("mirror copies cut at shutdown", upstream=self.name, count=len(pending))


class Mirror:
    """A route's mirror: its settings compiled at load, and the copy of each request."""

    __slots__ = ("max_body", "percent", "split", "upstream")

    def __init__(self, config: MirrorConfig, upstream: Upstream) -> None:
        self.upstream = upstream
        self.percent = config.percent
        self.max_body = config.max_body
        self.split = Split(config.percent)  # the requests mirrored: evenly spread

    def start(self, request: web.BaseRequest, ctx: Context, upstream_request: UpstreamRequest,
              timeout: float, max_body: int) -> TeeBody | None:
        """Mirror this request if it is its turn.

        Called once ``transform_request`` has run. A request without a body, or with
        one a plugin set, is copied now; for a body that streams from the client, the
        body to stream it through instead (a :class:`TeeBody`, which sends the copy once
        the body has ended), else None.

        :param timeout: the longest a copy may take (``gateway.timeout``).
        :param max_body: the gateway's ``max_body``, which the client's body is held to.
        """
        if not self.split.canary():
            return None
        copies = self.upstream.mirrored
        assert copies is not None, "a mirror upstream without its Copies"
        data = upstream_request.body
        streamed = data is None and request.body_exists
        if streamed:
            length = request.content_length
            if length is not None and length > self.max_body:
                copies.too_large += 1
                return None
        elif data is not None and len(data) > self.max_body:
            copies.too_large += 1
            return None
        if not copies.reserve():
            return None
        copy = Copy(self.upstream, copies, ctx, upstream_request, timeout, self.max_body)
        if not streamed:
            copy.send([data] if data else [])
            return None
        return TeeBody(request.content, max_body, ctx, copy)

    def describe(self) -> str:
        """For ``pygate explain``."""
        upstream = self.upstream
        targets = ", ".join(t.label for t in upstream.targets)
        return (f"mirror: {upstream.name} ({upstream.config.balancer}: {targets}): "
                f"{self.percent:g}% of requests, bodies up to {size_text(self.max_body)}, "
                f"at most {upstream.config.max_connections} copies in flight; "
                "its answers are dropped")


def size_text(size: int) -> str:
    """``1048576`` -> ``"1MB"``, ``1536`` -> ``"1.5KB"``, ``100`` -> ``"100 bytes"``."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:g}{unit}"
    return f"{size} bytes"


class Copy:
    """One request's copy, from the moment its place is reserved until it is sent or
    given up (exactly one of :meth:`send`, :meth:`too_large`, :meth:`abandon` counts)."""

    __slots__ = ("copies", "ctx", "done", "max_body", "request", "timeout", "upstream")

    def __init__(self, upstream: Upstream, copies: Copies, ctx: Context,
                 upstream_request: UpstreamRequest, timeout: float, max_body: int) -> None:
        self.upstream = upstream
        self.copies = copies
        self.timeout = timeout
        self.max_body = max_body
        self.done = False
        # A snapshot: the route's own request may still change (its body streams on).
        self.request = UpstreamRequest(
            method=upstream_request.method, path=upstream_request.path,
            query=upstream_request.query, headers=CIMultiDict(upstream_request.headers),
            upstream=upstream.name)
        # The copy's own context: its target, timings and breaker claim are not the
        # client's request's, and no log hook sees it.
        mirrored = Context(request_id=ctx.request_id, client_ip=ctx.client_ip,
                           method=ctx.method, path=ctx.path, start=time.monotonic())
        mirrored.route = ctx.route
        mirrored.identity = ctx.identity
        mirrored.app, mirrored.gateway = ctx.app, ctx.gateway
        mirrored.upstream = upstream.name
        self.ctx = mirrored

    def send(self, parts: list[bytes]) -> None:
        """Send the copy with this body (its pieces), in a task of its own."""
        if self.done:
            return
        self.done = True
        task = asyncio.get_running_loop().create_task(self._run(parts))
        tasks = self.copies.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def too_large(self) -> None:
        """The body turned out larger than ``max_body``: not mirrored."""
        if not self.done:
            self.done = True
            self.copies.too_large += 1
            self.copies.release()

    def abandon(self) -> None:
        """The body did not reach its end (the client's upstream did not read it all, the
        client went away): not mirrored."""
        if not self.done:
            self.done = True
            self.copies.release()

    async def _run(self, parts: list[bytes]) -> None:
        copies = self.copies
        ctx = self.ctx
        body = b"".join(parts) if len(parts) != 1 else parts[0]
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            async with asyncio.timeout_at(deadline):
                response = await send(self.upstream, ctx, self.request, deadline=deadline,
                                      data=body or None)
                try:
                    while await response.chunk():  # read and dropped
                        pass
                finally:
                    response.close()  # a no-op once read to its end (then kept alive)
            copies.sent += 1
        except Exception as exc:
            copies.failed += 1
            log.debug("mirror copy failed", request_id=ctx.request_id,
                      upstream=self.upstream.name, target=ctx.target,
                      error=getattr(exc, "detail", None) or type(exc).__name__)
        finally:
            copies.release()


class TeeBody(BodyLimit):
    """The client's body on its way to the route's upstream, copied for the mirror.

    Each chunk is passed on as it arrives; a reference to it is kept (no bytes are
    copied) while the total stays within the mirror's ``max_body``. When the body
    ends, the copy is sent with it; past ``max_body`` the pieces are let go and the
    request is not mirrored.
    """

    __slots__ = ("copy", "started")

    def __init__(self, reader: aiohttp.StreamReader, limit: int, ctx: Context,
                 copy: Copy) -> None:
        super().__init__(reader, limit, ctx)
        self.copy = copy
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        copy = self.copy
        keep = copy.max_body
        parts: list[bytes] | None = []
        size = 0
        try:
            async for chunk in super().chunks():
                if parts is not None:
                    size += len(chunk)
                    if size > keep:
                        parts = None
                        copy.too_large()
                    else:
                        parts.append(chunk)
                yield chunk
            if parts is not None:
                copy.send(parts)
        finally:
            copy.abandon()  # a no-op once sent or found too large

    def settle(self) -> None:
        """After the exchange: a body nobody started to read is not mirrored."""
        if not self.started:
            self.copy.abandon()
