"""prometheus through an in-process gateway (pygate.testing) against fake upstreams.

The metrics are process-wide (as in production: one set per worker), so each test
reads the difference its own requests made, on route names of its own.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pygate_cache
import pygate_prometheus
import pygate_rate_limit
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pygate_prometheus.exposition import Exporter
from pygate_prometheus.metrics import (
    METHODS,
    Metrics,
    add_to_histogram,
    live_families,
    process_metrics,
)

from pygate.plugin import Gateway

if TYPE_CHECKING:
    from pygate.testing import TestGateway

pytest_plugins = ["pygate.testing"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(facade: Gateway | None) -> Samples:
    body, content_type = pygate_prometheus.render(facade)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def facade(gateway: TestGateway) -> Gateway:
    found: Gateway = gateway.running.gateway.facade
    return found


async def settle() -> None:
    """Let the log hooks the core scheduled after the responses run."""
    for _ in range(3):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


Start = Callable[..., Any]


async def start(pygate_gateway: Start, config: dict[str, Any], **plugins: Any) -> TestGateway:
    modules = {"prometheus": pygate_prometheus, **plugins}
    gateway: TestGateway = await pygate_gateway(config, plugins=modules)
    return gateway


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------


def test_installed_under_the_pygate_entry_point_group() -> None:
    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pygate")}
    assert points.get("prometheus") == "pygate_prometheus"
    assert importlib.metadata.distribution("pygate-prometheus").version == "0.1.0"


async def test_settings_are_checked(pygate_gateway: Start) -> None:
    with pytest.raises(Exception, match=r"plugins\.prometheus\.bucket"):
        await start(pygate_gateway, {"plugins": {"prometheus": {"bucket": [1]}},
                                     "routes": [{"name": "x", "path": "/",
                                                 "upstream": dead_url()}]})


# ---------------------------------------------------------------------------
# Per request: the log hook
# ---------------------------------------------------------------------------


async def test_counts_requests_by_route_method_and_status(pygate_gateway: Start,
                                                          fake_upstream: Start) -> None:
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "routes": [{"name": "count-a", "path": "/a", "upstream": upstream.url},
                   {"name": "count-b", "path": "/b", "methods": ["GET"],
                    "upstream": upstream.url}]})
    before = scrape(facade(gateway))
    for _ in range(3):
        assert (await gateway.request("GET", "/a/x"))[0] == 200
    assert (await gateway.request("POST", "/a/x", data=b"{}"))[0] == 200
    assert (await gateway.request("DELETE", "/b"))[0] == 405
    assert (await gateway.request("GET", "/nowhere"))[0] == 404
    await settle()
    after = scrape(facade(gateway))

    def delta(**labels: str) -> float:
        return (value(after, "pygate_requests_total", **labels)
                - value(before, "pygate_requests_total", **labels))

    assert delta(route="count-a", method="GET", status="200") == 3
    assert delta(route="count-a", method="POST", status="200") == 1
    assert delta(route="count-b", method="DELETE", status="405") == 1
    assert delta(route="", method="GET", status="404") >= 1  # matched no route
    assert not any(name.endswith("_created") for name, _ in after)


async def test_duration_histograms_per_route_and_per_upstream_target(
        pygate_gateway: Start, fake_upstream: Start) -> None:
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "upstreams": {"hist-up": {"targets": [upstream.url]}},
        "routes": [{"name": "hist", "path": "/", "upstream": "hist-up"}]})
    for _ in range(4):
        assert (await gateway.request("GET", "/x"))[0] == 200
    await settle()
    samples = scrape(facade(gateway))
    assert value(samples, "pygate_request_duration_seconds_count", route="hist") == 4
    assert value(samples, "pygate_request_duration_seconds_bucket", route="hist", le="+Inf") == 4
    assert 0 < value(samples, "pygate_request_duration_seconds_sum", route="hist") < 5
    target = {"upstream": "hist-up", "target": upstream.url}
    assert value(samples, "pygate_upstream_duration_seconds_count", **target) == 4
    assert value(samples, "pygate_upstream_duration_seconds_bucket", le="60.0", **target) == 4


async def test_upstream_duration_is_the_wait_for_the_head_not_the_streamed_body(
        pygate_gateway: Start, fake_upstream: Start) -> None:
    """The head comes at once, the body over 0.4 s: the request took the 0.4 s, the
    upstream histogram records the wait for the head only."""

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(4):
            await asyncio.sleep(0.1)
            await response.write(b"x" * 100)
        await response.write_eof()
        return response

    upstream = await fake_upstream(slow_body)
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "upstreams": {"stream-up": {"targets": [upstream.url]}},
        "routes": [{"name": "stream", "path": "/", "upstream": "stream-up"}]})
    status, _, body = await gateway.request("GET", "/x")
    assert (status, len(body)) == (200, 400)
    await settle()
    samples = scrape(facade(gateway))
    assert value(samples, "pygate_request_duration_seconds_sum", route="stream") >= 0.4
    target = {"upstream": "stream-up", "target": upstream.url}
    assert value(samples, "pygate_upstream_duration_seconds_count", **target) == 1
    assert value(samples, "pygate_upstream_duration_seconds_sum", **target) < 0.2


async def test_unusual_methods_share_one_label(pygate_gateway: Start,
                                               fake_upstream: Start) -> None:
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "routes": [{"name": "webdav", "path": "/", "upstream": upstream.url}]})
    assert "PROPFIND" not in METHODS
    assert (await gateway.request("PROPFIND", "/x"))[0] == 200
    await settle()
    samples = scrape(facade(gateway))
    assert value(samples, "pygate_requests_total", route="webdav", method="OTHER",
                 status="200") == 1
    assert value(samples, "pygate_requests_total", route="webdav", method="PROPFIND",
                 status="200") == 0


async def test_a_route_can_opt_out(pygate_gateway: Start, fake_upstream: Start) -> None:
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "routes": [{"name": "quiet", "path": "/", "upstream": upstream.url,
                    "plugins": {"prometheus": False}}]})
    assert (await gateway.request("GET", "/x"))[0] == 200
    await settle()
    assert value(scrape(facade(gateway)), "pygate_requests_total", route="quiet",
                 method="GET", status="200") == 0


# ---------------------------------------------------------------------------
# Read at scrape time
# ---------------------------------------------------------------------------


async def test_target_health_and_breaker_state(pygate_gateway: Start,
                                               fake_upstream: Start) -> None:
    upstream = await fake_upstream()
    dead = dead_url()
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "upstreams": {
            "mixed": {"targets": [upstream.url, dead],
                      "health": {"path": "/", "interval": "50ms", "timeout": "1s",
                                 "unhealthy": 1, "healthy": 1}},
            "broken": {"targets": [dead], "retries": 0,
                       "breaker": {"failures": 1, "cooldown": "1m"}}},
        "routes": [{"name": "mixed", "path": "/m", "upstream": "mixed"},
                   {"name": "broken", "path": "/b", "upstream": "broken"}]})
    assert (await gateway.request("GET", "/b"))[0] == 502  # opens the breaker
    samples: Samples = {}
    for _ in range(100):  # the first probes go out as the gateway starts
        samples = scrape(facade(gateway))
        if value(samples, "pygate_upstream_target_healthy", upstream="mixed", target=dead,
                 ) == 0 and ("pygate_upstream_target_healthy",
                             frozenset({("upstream", "mixed"), ("target", dead)})) in samples:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "pygate_upstream_target_healthy", upstream="mixed",
                 target=upstream.url) == 1
    assert ("pygate_upstream_target_healthy",
            frozenset({("upstream", "mixed"), ("target", dead)})) in samples
    assert value(samples, "pygate_upstream_target_healthy", upstream="mixed", target=dead) == 0
    states = {state: value(samples, "pygate_upstream_target_breaker_state", upstream="broken",
                           target=dead, state=state)
              for state in ("closed", "open", "half-open")}
    assert states == {"closed": 0, "open": 1, "half-open": 0}
    assert value(samples, "pygate_upstream_target_breaker_state", upstream="mixed",
                 target=upstream.url, state="closed") == 1
    assert value(samples, "pygate_upstream_target_in_flight", upstream="mixed",
                 target=upstream.url) == 0


async def test_rate_limit_decisions_and_cache_outcomes(pygate_gateway: Start,
                                                       fake_upstream: Start) -> None:
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, {
        "plugins": {"prometheus": {}},
        "routes": [{"name": "limited", "path": "/limited", "upstream": upstream.url,
                    "plugins": {"rate-limit": {"limit": 2, "window": "1m"}}},
                   {"name": "cached", "path": "/cached", "upstream": upstream.url,
                    "plugins": {"cache": {"ttl": "1m"}}}]},
        **{"rate-limit": pygate_rate_limit, "cache": pygate_cache})
    before = scrape(facade(gateway))
    statuses = [(await gateway.request("GET", "/limited"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    caches = [(await gateway.request("GET", "/cached/1"))[1].get("X-Cache") for _ in range(2)]
    assert caches == ["MISS", "HIT"]
    await settle()
    after = scrape(facade(gateway))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pygate_rate_limit_decisions_total", decision="allowed") == 2
    assert delta("pygate_rate_limit_decisions_total", decision="limited") == 1
    assert delta("pygate_cache_responses_total", outcome="miss") == 1
    assert delta("pygate_cache_responses_total", outcome="hit") == 1
    assert delta("pygate_cache_stored_total") == 1
    assert ("pygate_rate_limit_backend_errors_total", frozenset()) in after
    assert delta("pygate_requests_total", route="limited", method="GET", status="429") == 1


# ---------------------------------------------------------------------------
# Units: live views, reloads, in flight
# ---------------------------------------------------------------------------


class FakeGateway:
    """What the metrics read of a pygate.plugin.Gateway, set by hand."""

    def __init__(self, *, in_flight: int | None = None, generation: int | None = None,
                 targets: list[dict[str, Any]] | None = None) -> None:
        self.in_flight = in_flight
        self.generation = generation
        self.targets = targets or []

    def upstreams(self) -> list[dict[str, Any]]:
        return [{"name": "fake", "targets": self.targets}]


def target(label: str, active: int = 0, healthy: bool = True,
           breaker: str = "closed") -> dict[str, Any]:
    return {"label": label, "weight": 1, "healthy": healthy, "breaker": breaker,
            "active": active}


def registry_samples(metrics: Metrics) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in metrics.registry.collect() for s in family.samples}


def test_in_flight_in_all_and_per_target_follow_the_gateway() -> None:
    metrics = process_metrics()
    fake = FakeGateway(in_flight=7, targets=[target("t-one", active=3), target("t-two")])
    metrics.sync(fake)  # type: ignore[arg-type]
    samples = registry_samples(metrics)
    assert value(samples, "pygate_requests_in_flight") == 7
    assert value(samples, "pygate_upstream_target_in_flight", upstream="fake",
                 target="t-one") == 3
    fake.targets = [target("t-two", active=1)]  # t-one went with a reload
    fake.in_flight = 1
    metrics.sync(fake)  # type: ignore[arg-type]
    samples = registry_samples(metrics)
    assert value(samples, "pygate_requests_in_flight") == 1
    assert ("pygate_upstream_target_in_flight",
            frozenset({("upstream", "fake"), ("target", "t-one")})) not in samples
    metrics.sync(None, final=True)  # the process stops serving
    assert value(registry_samples(metrics), "pygate_requests_in_flight") == 0


def test_a_server_that_does_not_count_shows_no_in_flight_gauge() -> None:
    metrics = Metrics()  # a fresh set, as in a process whose server never counted
    metrics.sync(FakeGateway(in_flight=None))  # type: ignore[arg-type]
    assert not any(name == "pygate_requests_in_flight"
                   for name, _ in registry_samples(metrics))


def test_live_views_name_the_generation_and_reloads() -> None:
    fake = FakeGateway(generation=4, targets=[target("t", healthy=False, breaker="half-open")])
    families = {f.name: f for f in live_families(fake, reloads=3)}  # type: ignore[arg-type]
    assert families["pygate_config_generation"].samples[0].value == 4
    assert families["pygate_config_reloads"].samples[0].value == 3
    assert families["pygate_upstream_target_healthy"].samples[0].value == 0
    breaker = {s.labels["state"]: s.value
               for s in families["pygate_upstream_target_breaker_state"].samples}
    assert breaker == {"closed": 0, "open": 0, "half-open": 1}
    unnumbered = {f.name for f in live_families(FakeGateway(), None)}  # type: ignore[arg-type]
    assert "pygate_config_generation" not in unnumbered
    assert "pygate_config_reloads" not in unnumbered


async def test_the_exporter_counts_a_gateway_started_beside_another_as_a_reload() -> None:
    metrics = process_metrics()
    exporter = Exporter()
    first, second = FakeGateway(), FakeGateway()
    exporter.attach(first, metrics)  # type: ignore[arg-type]
    exporter.attach(second, metrics)  # type: ignore[arg-type]  (a reload: first still runs)
    exporter.detach(first, metrics)  # type: ignore[arg-type]
    assert exporter.reloads == 1
    assert exporter.current is second
    await exporter.close()


async def test_render_without_a_gateway_leaves_the_live_views_out() -> None:
    samples = scrape(None)
    assert not any(name == "pygate_upstream_target_healthy" for name, _ in samples)


def test_running_totals_reach_the_histograms_bucket_by_bucket() -> None:
    metrics = Metrics()
    for ms in (1.0, 1.0, 3.0, 70_000.0):  # 1 ms is the first bound itself: le="0.001"
        metrics.observe("totals", "GET", 200, ms / 1000, "u", None, ms / 2000)
    metrics.sync(None)
    samples = registry_samples(metrics)
    assert value(samples, "pygate_request_duration_seconds_bucket", route="totals",
                 le="0.001") == 2
    assert value(samples, "pygate_request_duration_seconds_bucket", route="totals",
                 le="0.005") == 3
    assert value(samples, "pygate_request_duration_seconds_bucket", route="totals",
                 le="60.0") == 3
    assert value(samples, "pygate_request_duration_seconds_bucket", route="totals",
                 le="+Inf") == 4
    assert value(samples, "pygate_request_duration_seconds_sum", route="totals") == \
        pytest.approx(70.005)
    assert value(samples, "pygate_upstream_duration_seconds_count", upstream="u",
                 target="") == 4
    assert value(samples, "pygate_requests_total", route="totals", method="GET",
                 status="200") == 4
    metrics.observe("totals", "GET", 200, 0.002, None, None, 0.0)
    metrics.sync(None)  # only what was added since the last copy is added again
    samples = registry_samples(metrics)
    assert value(samples, "pygate_requests_total", route="totals", method="GET",
                 status="200") == 5
    assert value(samples, "pygate_request_duration_seconds_count", route="totals") == 5
    assert value(samples, "pygate_upstream_duration_seconds_count", upstream="u",
                 target="") == 4


def test_histograms_take_many_observations_at_once() -> None:
    """The copy adds to a histogram child's values directly (prometheus-client's
    ``observe`` takes one at a time); a release that stores them otherwise fails here,
    and the copy would fall back to replaying each observation."""
    metrics = Metrics()
    child = metrics.duration.labels("direct")
    assert len(child._buckets) == 16 and hasattr(child, "_sum")
    now = [0.0] * 17
    now[2], now[-1] = 3, 0.012
    add_to_histogram(child, now, None)
    replayed = metrics.duration.labels("replayed")
    add_to_histogram(types.SimpleNamespace(observe=replayed.observe), now, None)
    samples = registry_samples(metrics)
    for route in ("direct", "replayed"):
        assert value(samples, "pygate_request_duration_seconds_bucket", route=route,
                     le="0.005") == 3
        assert value(samples, "pygate_request_duration_seconds_count", route=route) == 3
    assert value(samples, "pygate_request_duration_seconds_sum", route="direct") == 0.012
