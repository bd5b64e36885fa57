"""pygate's ``prometheus`` plugin: metrics at the admin listener's ``/metrics``.

``log``, which the core runs after the response has gone, counts the request
and its duration (per route, and per upstream target for proxied requests) in
plain running totals, which reach prometheus-client's counter and histograms
when the metrics are scraped (every second in each worker of ``--workers N``).
Requests in flight, the rate-limit and cache plugins' counters, target health,
breaker states and the configuration's generation are read when the metrics
are scraped. The admin listener's ``GET /metrics`` answers :func:`render`.

With ``pygate serve --workers N`` every worker counts on its own and a scrape
sums them through prometheus-client's multiprocess mode: the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before it forks (:mod:`pygate_prometheus.multiproc`).
See README.md for every metric.
"""

from __future__ import annotations

from pydantic import BaseModel

from pygate.plugin import Context, Gateway, hookimpl

from . import metrics as _metrics
from .config import PrometheusConfig
from .exposition import (
    CONTENT_TYPE,
    Exporter,
    exporter_of,
    exposition,
    multiprocess_directory,
)
from .metrics import process_metrics

__version__ = "0.1.0"

NAME = "prometheus"  # the entry point's name: the [plugins.prometheus] table

PRIORITY = 6  # its log hook only counts: the order among log hooks does not matter

EXPORTER = "exporter"
"""``gateway.state(NAME)[EXPORTER]``: the event loop's :class:`Exporter` (``gateway.shared``)."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return PrometheusConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    """Make this process's metrics (prometheus-client is imported here, after a fork) and
    join the loop's exporter, which counts reloads and, with several workers, copies the
    live values to the shared files."""
    metrics = process_metrics()
    exporter = gateway.shared(NAME, Exporter)
    gateway.state(NAME)[EXPORTER] = exporter
    exporter.attach(gateway, metrics)


@hookimpl
def shutdown(gateway: Gateway) -> None:
    exporter: Exporter | None = gateway.state(NAME).pop(EXPORTER, None)
    if exporter is not None:
        exporter.detach(gateway, process_metrics())


@hookimpl
def log(ctx: Context) -> None:
    # Read from ctx: without ``record`` among the arguments, a chain whose other log
    # hooks do not name it either is spared building the access record.
    metrics = _metrics.current()
    if metrics is not None:
        route = ctx.route
        metrics.observe(route.name if route is not None else None, ctx.method, ctx.status,
                        ctx.end - ctx.start, ctx.upstream, ctx.target, ctx.upstream_time)


def render(gateway: Gateway | None) -> tuple[bytes, str]:
    """The admin listener's ``GET /metrics``: the exposition text and its content type.

    :param gateway: the gateway the admin listener serves (its upstreams' health,
        the configuration's generation); ``None`` leaves those out.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, several workers) the
    counters and histograms are every worker's, summed; otherwise this
    process's. Health, breaker states and the generation are this process's
    view. Blocking for a moment (it reads the files of every worker): call it
    from the event loop, or from a thread; it is thread-safe.
    """
    metrics = process_metrics()
    body = exposition(gateway, multiprocess_directory(metrics),
                      exporter=exporter_of(gateway, NAME))
    return body, CONTENT_TYPE


__all__ = [
    "CONTENT_TYPE",
    "NAME",
    "PRIORITY",
    "PrometheusConfig",
    "config_schema",
    "log",
    "render",
    "shutdown",
    "startup",
]
