"""The metrics of one process: running totals, prometheus-client objects, and how each
is fed.

Three kinds of figures, each fed its own way:

- **Per request** (:meth:`Metrics.observe`, from the ``log`` hook after the
  response has gone): requests by ``(route, method, status)`` and the two
  duration histograms. A request only adds to plain running totals (a few
  dictionary and list operations, about a microsecond); :meth:`Metrics.sync`
  copies what they gained into the prometheus-client counter and histograms.
  prometheus-client's own calls cost several times that per request (locks,
  checks, and with several workers a write to the shared file for each value).
- **Additive live values** (:meth:`Metrics.sync` too): requests in flight,
  requests in flight per target, and the rate-limit and cache plugins'
  ``metrics`` counters, copied into counters and gauges of this process.

  A single process syncs when it is scraped; a worker of ``pygate serve
  --workers N`` every :data:`SYNC_INTERVAL` (the scrape may happen in another
  process) and when it stops, and the scrape sums the workers.
- **Views of shared state** (:func:`live_families`): target health, breaker
  states and the configuration's generation, read from the gateway at scrape
  time and never summed (every worker checks the same targets).

prometheus-client is imported when the metrics are first made (by the plugin's
``startup``, or a scrape), never when the plugin module is: the library picks
its value storage (memory, or the files of ``PROMETHEUS_MULTIPROC_DIR``) when
it is imported, and the supervisor of ``pygate serve --workers N`` loads the
plugins before it sets that variable and forks.
"""

from __future__ import annotations

import os
import sys
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

    from pygate.plugin import Gateway

log = structlog.get_logger("pygate")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The directory prometheus-client's multiprocess mode keeps each process's values in."""

SYNC_INTERVAL = 1.0
"""Seconds between two copies of a worker's live values to the multiprocess files."""

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                     "CONNECT"})
"""Methods labelled as themselves; any other is ``OTHER`` (a client picks the method, and
each label value is one more series to keep)."""

OTHER_METHOD = "OTHER"

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
"""Upper bounds (seconds) of both duration histograms: a gateway answers in a millisecond
what a cache or a refusal answers, and in up to ``gateway.timeout`` what it proxies."""

BREAKER_STATES = ("closed", "open", "half-open")

PLUGIN_COUNTERS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # (plugin module, key of its ``metrics`` dict, family in PLUGIN_FAMILIES, label values)
    ("pygate_rate_limit", "allowed", "rate_limit", ("allowed",)),
    ("pygate_rate_limit", "limited", "rate_limit", ("limited",)),
    ("pygate_rate_limit", "backend_errors", "rate_limit_errors", ()),
    ("pygate_cache", "hits", "cache", ("hit",)),
    ("pygate_cache", "misses", "cache", ("miss",)),
    ("pygate_cache", "bypasses", "cache", ("bypass",)),
    ("pygate_cache", "stored", "cache_stored", ()),
    ("pygate_cache", "backend_errors", "cache_errors", ()),
)
"""Where the other first-party plugins' counters are read, and into which family. Their
modules are looked up in ``sys.modules``, never imported: a plugin the process did not
load has counted nothing, and its families are not shown."""

PLUGIN_FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    # key: (counter name without _total, help, label names)
    "rate_limit": ("pygate_rate_limit_decisions",
                   "Decisions of the rate-limit plugin: allowed or limited (429).", ["decision"]),
    "rate_limit_errors": ("pygate_rate_limit_backend_errors",
                          "Rate-limit checks that failed because the store did not answer.", []),
    "cache": ("pygate_cache_responses",
              "Answers of the cache plugin by X-Cache: hit, miss, bypass.", ["outcome"]),
    "cache_stored": ("pygate_cache_stored", "Responses the cache plugin stored.", []),
    "cache_errors": ("pygate_cache_backend_errors", "Cache store operations that failed.", []),
}


class Metrics:
    """Every metric of this process that prometheus-client stores (see the module doc)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess: bool = bool(getattr(values.ValueClass, "_multiprocess", False))
        """Values live in the files of ``PROMETHEUS_MULTIPROC_DIR`` (summed at scrape)."""
        if os.environ.get(MULTIPROC_ENV) and not self.multiprocess:
            log.warning("prometheus metrics are not shared between processes: "
                        f"prometheus_client was imported before {MULTIPROC_ENV} was set",
                        plugin="prometheus")
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests: Counter = Counter(
            "pygate_requests", "Requests answered, by route, method and status.",
            ["route", "method", "status"], registry=reg)
        self.duration: Histogram = Histogram(
            "pygate_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route.",
            ["route"], buckets=REQUEST_BUCKETS, registry=reg)
        self.upstream_duration: Histogram = Histogram(
            "pygate_upstream_duration_seconds",
            "Time waiting on each upstream target for proxied requests: from sending the "
            "request to the response head (retries included), or to the failure.",
            ["upstream", "target"], buckets=REQUEST_BUCKETS, registry=reg)
        # Made when the gateway first reports its count (Gateway.in_flight), so that a
        # server that does not count shows no gauge rather than a false 0.
        self.in_flight: Gauge | None = None
        self.target_in_flight: Gauge = Gauge(
            "pygate_upstream_target_in_flight",
            "Requests sent to each upstream target whose response has not ended.",
            ["upstream", "target"], multiprocess_mode="livesum", registry=reg)
        # The rate-limit and cache plugins' counters: made once their module is loaded
        # (PLUGIN_FAMILIES), so that a gateway without them shows none of their families.
        self._plugin_families: dict[str, Counter] = {}
        # Running totals the log hook adds to (see observe), and what of them is copied.
        self._requests: dict[tuple[str | None, str, int], int] = {}
        self._routes: dict[str | None, list[float]] = {}
        self._upstreams: dict[tuple[str, str | None], list[float]] = {}
        self._copied_requests: dict[tuple[str | None, str, int], int] = {}
        self._request_children: dict[tuple[str | None, str, int], Any] = {}
        self._route_children: dict[str | None, _Copied] = {}
        self._upstream_children: dict[tuple[str, str | None], _Copied] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._targets: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- per request (the log hook) ---------------------------------------------------

    def observe(self, route: str | None, method: str, status: int, seconds: float,
                upstream: str | None, target: str | None, upstream_seconds: float) -> None:
        """Count one finished request (running totals only): its route, method, status,
        duration, and the upstream and target that served it with the time spent
        waiting on it (``ctx.upstream_time``)."""
        if method not in METHODS:
            method = OTHER_METHOD
        key = (route, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        bucket = bisect_left(REQUEST_BUCKETS, seconds)  # le: a bound holds its own value
        totals = self._routes.get(route)
        if totals is None:
            totals = self._routes[route] = _histogram_totals()
        totals[bucket] += 1
        totals[-1] += seconds
        if upstream is not None:
            target_key = (upstream, target)
            totals = self._upstreams.get(target_key)
            if totals is None:
                totals = self._upstreams[target_key] = _histogram_totals()
            totals[bisect_left(REQUEST_BUCKETS, upstream_seconds)] += 1
            totals[-1] += upstream_seconds

    def _copy_requests(self) -> None:
        """What the running totals gained since the last copy, into prometheus-client."""
        copied = self._copied_requests
        for key, total in list(self._requests.items()):
            done = copied.get(key, 0)
            if total != done:
                child = self._request_children.get(key)
                if child is None:
                    route, method, status = key
                    child = self._request_children[key] = self.requests.labels(
                        route or "", method, str(status))
                child.inc(total - done)
                copied[key] = total
        for route, totals in list(self._routes.items()):
            self._copy_histogram(self.duration, self._route_children, route,
                                 (route or "",), totals)
        for pair, totals in list(self._upstreams.items()):
            self._copy_histogram(self.upstream_duration, self._upstream_children, pair,
                                 (pair[0], pair[1] or ""), totals)

    def _copy_histogram(self, metric: Histogram, children: dict[Any, _Copied], key: Any,
                        labels: tuple[str, ...], totals: list[float]) -> None:
        now = list(totals)  # one copy: a log hook may add while this runs (another thread)
        found = children.get(key)
        if found is None:
            found = children[key] = _Copied(metric.labels(*labels))
        if found.totals != now:
            add_to_histogram(found.child, now, found.totals)
            found.totals = now

    # -- additive live values -----------------------------------------------------------

    def sync(self, gateway: Gateway | None, *, final: bool = False) -> None:
        """Copy this process's figures into the prometheus-client metrics: the requests
        counted since the last copy, the other plugins' counters, and (with a gateway)
        the requests in flight, in all and per target. ``final``: the process stops
        serving, so nothing of it is in flight any more."""
        with self._lock:
            self._copy_requests()
            self._sync_plugin_counters()
            if final:
                if self.in_flight is not None:
                    self.in_flight.set(0)
                self._sync_targets([])
            elif gateway is not None:
                in_flight = gateway.in_flight
                if in_flight is not None:
                    self._in_flight_gauge().set(in_flight)
                self._sync_targets(gateway.upstreams())

    def _in_flight_gauge(self) -> Gauge:
        if self.in_flight is None:
            from prometheus_client import Gauge

            self.in_flight = Gauge("pygate_requests_in_flight", "Requests being handled now.",
                                   multiprocess_mode="livesum", registry=self.registry)
        return self.in_flight

    def _sync_plugin_counters(self) -> None:
        modules = sys.modules
        for module_name, key, family, labels in PLUGIN_COUNTERS:
            counts = getattr(modules.get(module_name), "metrics", None)
            if not isinstance(counts, dict):
                continue
            value = counts.get(key)
            if not isinstance(value, int):
                continue
            metric = self._plugin_families.get(family) or self._plugin_family(family)
            child = metric.labels(*labels) if labels else metric
            seen = self._seen.get((module_name, key), 0)
            delta = value - seen if value >= seen else value  # below: the dict was reset
            self._seen[(module_name, key)] = value
            if delta:
                child.inc(delta)

    def _plugin_family(self, family: str) -> Counter:
        from prometheus_client import Counter

        name, help_text, labels = PLUGIN_FAMILIES[family]
        metric = Counter(name, help_text, labels, registry=self.registry)
        self._plugin_families[family] = metric
        return metric

    def _sync_targets(self, upstreams: Iterable[Mapping[str, Any]]) -> None:
        now: set[tuple[str, str]] = set()
        for upstream in upstreams:
            for target in upstream["targets"]:
                labels = (upstream["name"], target["label"])
                self.target_in_flight.labels(*labels).set(target["active"])
                now.add(labels)
        for labels in self._targets - now:  # gone with a reload: 0, then forgotten here
            self.target_in_flight.labels(*labels).set(0)
            self.target_in_flight.remove(*labels)
        self._targets = now


class _Copied:
    """A histogram's label child and the running totals already copied into it."""

    __slots__ = ("child", "totals")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.totals: list[float] | None = None


def _histogram_totals() -> list[float]:
    """A histogram's running totals: a count per bucket (``+Inf`` last), then the sum."""
    return [0] * (len(REQUEST_BUCKETS) + 1) + [0.0]


def add_to_histogram(child: Any, now: list[float], before: list[float] | None) -> None:
    """Add ``now - before`` (running totals: a count per bucket, then the sum) to a
    prometheus-client histogram child.

    A child keeps one value per bucket (not cumulative) and one for the sum, which take
    any amount; ``observe`` only takes one observation at a time, so this adds to them
    directly. Should a prometheus-client release keep them otherwise, each observation
    is replayed at its bucket's bound (counts exact, the sum then approximate).
    """
    old = before or [0] * len(now)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if isinstance(buckets, list) and len(buckets) == len(now) - 1 and total is not None:
        for index, value in enumerate(buckets):
            added = now[index] - old[index]
            if added:
                value.inc(added)
        if now[-1] != old[-1]:
            total.inc(now[-1] - old[-1])
        return
    bounds = [*REQUEST_BUCKETS, REQUEST_BUCKETS[-1] * 2]  # +Inf: past the last bound
    for index, bound in enumerate(bounds):
        for _ in range(int(now[index] - old[index])):
            child.observe(bound)


_metrics: Metrics | None = None
_made = threading.Lock()


def process_metrics() -> Metrics:
    """This process's metrics, made on first use (process-wide: every gateway of every
    event loop of the process counts into them)."""
    global _metrics
    if _metrics is None:
        with _made:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def current() -> Metrics | None:
    """The metrics if made, else ``None`` (for the log hook: no import, no lock)."""
    return _metrics


# ---------------------------------------------------------------------------
# Views of shared state, read at scrape time
# ---------------------------------------------------------------------------


def live_families(gateway: Gateway, reloads: int | None) -> Iterator[Metric]:
    """Target health, breaker states and the configuration generation, as ``gateway``
    sees them now (and the reloads this process applied, when known)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    healthy = GaugeMetricFamily(
        "pygate_upstream_target_healthy",
        "1 while the active health checks find the target healthy (always 1 without "
        "health checks), else 0.", labels=["upstream", "target"])
    breaker = GaugeMetricFamily(
        "pygate_upstream_target_breaker_state",
        "1 for the current state of the target's circuit breaker (closed, open, half-open), "
        "0 for the others; closed without a breaker.", labels=["upstream", "target", "state"])
    for upstream in gateway.upstreams():
        name = upstream["name"]
        for target in upstream["targets"]:
            label = target["label"]
            healthy.add_metric([name, label], 1.0 if target["healthy"] else 0.0)
            for state in BREAKER_STATES:
                breaker.add_metric([name, label, state],
                                   1.0 if target["breaker"] == state else 0.0)
    yield healthy
    yield breaker
    generation = gateway.generation
    if generation is not None:
        yield GaugeMetricFamily(
            "pygate_config_generation",
            "Which configuration is loaded: 1 at start, one more for each reload.",
            value=generation)
    if reloads is not None:
        yield CounterMetricFamily(
            "pygate_config_reloads",
            "Configuration reloads this process applied while the plugin was on.",
            value=reloads)
