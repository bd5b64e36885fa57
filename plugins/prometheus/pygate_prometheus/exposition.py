"""The text the admin listener's ``/metrics`` answers, and the per-loop object that keeps
a worker's live values in the shared files.

:func:`exposition` gathers, for one scrape, what prometheus-client stores (this
process's registry, or with several workers the files of every worker through
``MultiProcessCollector``) and the views read from the gateway at scrape time
(:func:`~pygate_prometheus.metrics.live_families`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from .metrics import MULTIPROC_ENV, SYNC_INTERVAL, Metrics, live_families, process_metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pygate.plugin import Gateway

log = structlog.get_logger("pygate")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that every Prometheus server reads."""


class Exporter:
    """The prometheus plugin's object for one event loop (``gateway.shared``).

    It knows the gateways of the loop whose state the metrics read (the newest
    is the one serving new requests), counts the reloads (a gateway started
    while another still runs), and, when the values live in the multiprocess
    files, copies this worker's live values there every :data:`SYNC_INTERVAL`.
    """

    def __init__(self) -> None:
        self.gateways: list[Gateway] = []
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> Gateway | None:
        return self.gateways[-1] if self.gateways else None

    def attach(self, gateway: Gateway, metrics: Metrics) -> None:
        """``gateway`` started (``startup``)."""
        if self.gateways:
            self.reloads += 1
        self.gateways.append(gateway)
        if metrics.multiprocess and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._copy_every(metrics), name="pygate-prometheus-sync")

    def detach(self, gateway: Gateway, metrics: Metrics) -> None:
        """``gateway`` stops (``shutdown``); the last one leaves its final values."""
        with contextlib.suppress(ValueError):
            self.gateways.remove(gateway)
        if not self.gateways and metrics.multiprocess:
            metrics.sync(None, final=True)

    async def _copy_every(self, metrics: Metrics) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                metrics.sync(self.current)
            except Exception:  # a failed copy must not end the next ones
                log.exception("prometheus metrics sync failed", plugin="prometheus")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _Scrape:
    """The collectors of one scrape, as one object for ``generate_latest``."""

    def __init__(self, metrics: Metrics, directory: str | None, gateway: Gateway | None,
                 reloads: int | None) -> None:
        self.metrics = metrics
        self.directory = directory
        self.gateway = gateway
        self.reloads = reloads

    def collect(self) -> Iterator[Metric]:
        if self.directory is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            yield from MultiProcessCollector(None, self.directory).collect()
        else:
            for metric in self.metrics.registry.collect():
                # as in multiprocess mode: no ``_created`` series (one more per series,
                # and the process start time says as much)
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
                yield metric
        if self.gateway is not None:
            yield from live_families(self.gateway, self.reloads)


def exporter_of(gateway: Gateway | None, name: str) -> Exporter | None:
    """The plugin's exporter on ``gateway``, or ``None`` when the plugin is not started
    there (not one of its plugins, or its startup has not run in this process)."""
    if gateway is None:
        return None
    try:
        found = gateway.state(name).get("exporter")
    except KeyError:
        return None
    return found if isinstance(found, Exporter) else None


def exposition(gateway: Gateway | None, directory: str | None, *,
               exporter: Exporter | None = None) -> bytes:
    """The metrics as Prometheus text: from ``directory`` (every process's files) when
    given, else from this process's registry; plus the gateway's live views."""
    from prometheus_client import generate_latest

    metrics = process_metrics()
    if exporter is not None:
        metrics.sync(exporter.current or gateway)
    reloads = exporter.reloads if exporter is not None else None
    return generate_latest(_Scrape(metrics, directory, gateway, reloads))


def multiprocess_directory(metrics: Metrics) -> str | None:
    """Where every process's values are, when this process writes its own there too."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and metrics.multiprocess else None
