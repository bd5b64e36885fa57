"""The OpenTelemetry SDK side: a tracer provider per distinct export setting, each with
its batch processor and OTLP/HTTP exporter; and their bounded shutdown.

The SDK's :class:`BatchSpanProcessor` keeps ended spans in a bounded queue (the
oldest go when it is full) and a thread of its own sends them in batches, so a
collector that is down, slow or failing costs a request nothing: ending a span
appends to a deque. Providers are made in ``startup``, that is in each worker
after the fork, so every worker exports its own spans; none is registered as
OpenTelemetry's global provider (a gateway's tracing is the gateway's).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable

import structlog
from opentelemetry.context import Context as TraceContext
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from .config import OpenTelemetryConfig

log = structlog.get_logger("pygate")

MAX_ATTRIBUTE_LENGTH = 2048
"""Longer string attributes (a path, a User-Agent: the client's to choose) are cut."""

SHUTDOWN_WAIT = 5.0
"""Seconds ``shutdown`` waits for the last spans to be sent; then they are given up."""

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
"""Where spans go when neither the table nor the environment says (OTLP/HTTP's default)."""

EMPTY = TraceContext()
"""The OpenTelemetry context of a request without a caller's span: passed explicitly,
so that the SDK never consults a context-local "current span"."""


class Tracing:
    """One tracer provider: its sampler, its service name, its export pipeline."""

    __slots__ = ("endpoint", "processor", "provider", "tracer")

    def __init__(self, config: OpenTelemetryConfig, version: str) -> None:
        self.endpoint = endpoint(config)
        exporter = OTLPSpanExporter(endpoint=self.endpoint, headers=dict(config.headers),
                                    timeout=config.timeout)
        self.processor = BatchSpanProcessor(
            exporter, max_queue_size=config.max_queue,
            schedule_delay_millis=config.flush_interval * 1000,
            max_export_batch_size=config.max_batch,
            export_timeout_millis=config.timeout * 1000)
        # ParentBased: a caller's sampled trace is always recorded, its unsampled one
        # never; `sample` is the share of the traces this gateway starts.
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample)),
            resource=Resource.create({SERVICE_NAME: config.service_name}),
            span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH),
            shutdown_on_exit=False)  # shut down by the plugin's shutdown, bounded
        self.provider.add_span_processor(self.processor)
        self.tracer: Tracer = self.provider.get_tracer("pygate_opentelemetry", version)

    def close(self) -> None:
        """Send what is queued and stop (blocking: run it off the event loop)."""
        self.provider.shutdown()


def endpoint(config: OpenTelemetryConfig) -> str:
    """The collector's URL: ``endpoint``, else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus ``/v1/traces``, else :data:`DEFAULT_ENDPOINT`
    (the OpenTelemetry exporter specification's order)."""
    if config.endpoint is not None:
        return config.endpoint
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if base:
        return base.rstrip("/") + "/v1/traces"
    return DEFAULT_ENDPOINT


async def close_all(tracings: Iterable[Tracing], wait: float = SHUTDOWN_WAIT) -> bool:
    """Close every provider in a thread of its own; wait at most ``wait`` seconds.

    Whether they all finished: past ``wait`` (a collector that does not answer)
    the spans still queued are given up, and the gateway's shutdown goes on.
    The thread is a daemon, so a process that exits does not wait for it.
    """
    tracings = list(tracings)
    if not tracings:
        return True
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def close() -> None:
        try:
            for tracing in tracings:
                try:
                    tracing.close()
                except Exception:  # one provider's failure must not keep the others open
                    log.exception("tracer provider failed to shut down",
                                  plugin="opentelemetry", endpoint=tracing.endpoint)
        finally:
            try:
                loop.call_soon_threadsafe(finished)
            except RuntimeError:  # the loop closed already: nobody waits
                pass

    threading.Thread(target=close, name="pygate-opentelemetry-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), wait)
    except TimeoutError:
        log.warning("spans not exported: the collector did not take them in time",
                    plugin="opentelemetry", wait=wait,
                    endpoints=sorted({tracing.endpoint for tracing in tracings}))
        return False
    return True
