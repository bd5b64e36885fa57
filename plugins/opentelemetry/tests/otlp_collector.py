"""An OTLP/HTTP trace receiver for the tests: a real aiohttp server on loopback.

It accepts ``POST /v1/traces`` as a collector does (protobuf
``ExportTraceServiceRequest``, decoded with the ``opentelemetry-proto`` package the
exporter depends on) and keeps every span it received, flattened into
:class:`Received`. ``mode`` makes it a collector in trouble: ``"fail"`` answers 500
to every export, ``"slow"`` holds each export for ``delay`` seconds before answering.
The ``collector`` fixture (conftest.py) starts them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.StatusCode.STATUS_CODE_ERROR
UNSET = Status.StatusCode.STATUS_CODE_UNSET


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        found[pair.key] = value_of(pair.value)
    return found


@dataclass
class Received:
    """One exported span, with ids as lowercase hex (as a traceparent writes them)."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    trace_state: str
    start: int  # Unix nanoseconds
    end: int
    attributes: dict[str, Any]
    status: int
    status_message: str
    resource: dict[str, Any]
    scope: str

    @property
    def duration(self) -> float:
        return (self.end - self.start) / 1e9


@dataclass
class Collector:
    """The receiver and what it received."""

    url: str  # the traces endpoint: http://127.0.0.1:PORT/v1/traces
    runner: web.AppRunner
    mode: str = "ok"
    delay: float = 0.0
    spans: list[Received] = field(default_factory=list)
    exports: list[CIMultiDictProxy[str]] = field(default_factory=list)  # request headers

    async def close(self) -> None:
        await self.runner.cleanup()

    def of_kind(self, kind: int) -> list[Received]:
        return [span for span in self.spans if span.kind == kind]

    def in_trace(self, trace_id: str) -> list[Received]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(self, count: int, *, trace_id: str | None = None,
                       within: float = 10.0) -> list[Received]:
        """The spans received (of ``trace_id`` only, when given), once there are
        ``count``; polls, and fails after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            found = self.spans if trace_id is None else self.in_trace(trace_id)
            if len(found) >= count:
                return list(found)
            assert time.monotonic() < deadline, (
                f"{len(found)} spans after {within}s, expected {count}: {found}")
            await asyncio.sleep(0.02)


def _received(request: ExportTraceServiceRequest) -> list[Received]:
    found = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(Received(
                    name=span.name, kind=span.kind, trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                    trace_state=span.trace_state, start=span.start_time_unix_nano,
                    end=span.end_time_unix_nano, attributes=attributes_of(span.attributes),
                    status=span.status.code, status_message=span.status.message,
                    resource=resource, scope=scope_spans.scope.name))
    return found


async def start_collector(mode: str = "ok", delay: float = 0.0) -> Collector:
    """A receiver on a free loopback port, answering as ``mode`` says."""
    collector: Collector

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if collector.mode == "slow":
            await asyncio.sleep(collector.delay)
        if collector.mode == "fail":
            return web.Response(status=500, text="collector failure")
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(body)
        collector.exports.append(request.headers)
        collector.spans.extend(_received(decoded))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    collector = Collector(url=f"http://127.0.0.1:{port}/v1/traces", runner=runner, mode=mode,
                          delay=delay)
    return collector



CollectorFactory = Callable[..., Awaitable[Collector]]
