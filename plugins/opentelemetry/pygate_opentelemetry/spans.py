"""One request's spans: the server span, a client span per upstream call.

:func:`begin` (from ``pre_route``) continues the caller's trace or starts one and
opens the server span at the request's arrival; :meth:`RequestTrace.call` (from
``transform_request``, once per upstream call: proxy, aggregate and GraphQL calls
alike) opens a client span and names it in the call's ``traceparent``;
:meth:`RequestTrace.finish` (from ``log``) ends every span with the outcomes the
core recorded, at the times they happened, and hands them to the exporter. Nothing
of a request's tracing outlives the request: the spans are on its ``ctx.state``
until ``log`` ends them.

Times: ``ctx.start``, ``ctx.end`` and a call's ``started`` are ``time.monotonic()``
readings; spans want wall-clock nanoseconds. Each request measures the offset between
the two clocks once (in ``pre_route``) and converts with it, so the spans of one
request agree with each other even if the wall clock is stepped meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)

from pygate.plugin import Context, UpstreamRequest

from . import attributes
from .export import EMPTY
from .propagation import remote_parent, traceparent, tracestate


class RequestTrace:
    """The spans of one request, in ``ctx.state`` from ``pre_route`` to ``log``."""

    __slots__ = ("calls", "context", "offset", "server", "tracer", "tracestate")

    def __init__(self, tracer: Tracer, server: Span, offset: int) -> None:
        self.tracer = tracer
        self.server = server
        self.offset = offset  # wall-clock ns minus monotonic ns, measured once
        self.context = set_span_in_context(server, EMPTY)  # the parent of client spans
        self.tracestate = tracestate(server.get_span_context())
        self.calls: list[tuple[UpstreamRequest, Span]] = []

    def call(self, upstream_request: UpstreamRequest) -> None:
        """Open the call's client span and name it in the call's ``traceparent`` (and
        pass the trace's ``tracestate`` on), replacing whatever the client sent."""
        name = upstream_request.method
        if name not in attributes.KNOWN_METHODS:
            name = "HTTP"
        span = self.tracer.start_span(f"{name} {upstream_request.upstream}", self.context,
                                      kind=SpanKind.CLIENT, start_time=time.time_ns())
        headers = upstream_request.headers
        headers["traceparent"] = traceparent(span.get_span_context())
        if self.tracestate is not None:
            headers["tracestate"] = self.tracestate
        elif "tracestate" in headers:
            del headers["tracestate"]
        self.calls.append((upstream_request, span))

    def finish(self, ctx: Context) -> None:
        """End the client spans, then the server span, with what happened."""
        offset = self.offset
        end = offset + int(ctx.end * 1e9)
        for upstream_request, span in self.calls:
            if span.is_recording():
                _end_call(span, upstream_request, offset, end)
        self.calls.clear()
        server = self.server
        if not server.is_recording():
            return
        found: dict[str, Any] = {}
        if attributes.server_outcome(ctx.status, found):
            server.set_status(Status(StatusCode.ERROR, ctx.error))
        server.set_attributes(found)
        server.end(end_time=max(end, _start_of(server, end)))


def begin(tracer: Tracer, request: web.BaseRequest, ctx: Context) -> RequestTrace:
    """Continue the caller's trace (a valid ``traceparent`` is the parent, with its
    ``tracestate``) or start one, open the server span at the request's arrival, and
    set ``ctx.trace_id``."""
    headers = request.headers
    parent = remote_parent(headers.getall("traceparent", None),
                           headers.getall("tracestate", None))
    context = EMPTY if parent is None else set_span_in_context(NonRecordingSpan(parent), EMPTY)
    offset = time.time_ns() - time.monotonic_ns()
    found: dict[str, Any] = {}
    route = ctx.route
    name = attributes.server_span(
        ctx.method, route.name if route is not None else None, found, path=ctx.path,
        scheme="https" if request.secure else "http", host=headers.get("Host"),
        client_ip=ctx.client_ip, user_agent=headers.get("User-Agent"),
        version=(request.version.major, request.version.minor))
    server = tracer.start_span(name, context, kind=SpanKind.SERVER,
                               start_time=offset + int(ctx.start * 1e9))
    if server.is_recording():
        server.set_attributes(found)
    ctx.trace_id = f"{server.get_span_context().trace_id:032x}"
    return RequestTrace(tracer, server, offset)


def _end_call(span: Span, upstream_request: UpstreamRequest, offset: int, latest: int) -> None:
    """End one client span: at the response head (or the failure) the core recorded, or
    at the response's end (``latest``) for a call without an outcome."""
    error = upstream_request.error
    status = upstream_request.status
    started = upstream_request.started
    found: dict[str, Any] = {}
    failed = attributes.client_outcome(
        upstream_request.method, found, path=upstream_request.path,
        sent_to=upstream_request.sent_to, status=status,
        error=type(error).__name__ if error is not None else None, made=started > 0)
    span.set_attributes(found)
    if failed:
        detail = error.detail if error is not None else (
            None if status else "the call did not complete")
        span.set_status(Status(StatusCode.ERROR, detail))
    if started and (status or error is not None):
        end = offset + int((started + upstream_request.elapsed) * 1e9)
    else:
        end = latest
    span.end(end_time=max(end, _start_of(span, end)))


def _start_of(span: Span, default: int) -> int:
    """When ``span`` started (an SDK span knows; the API's ``Span`` does not say)."""
    start: int | None = getattr(span, "start_time", None)
    return start if start is not None else default
