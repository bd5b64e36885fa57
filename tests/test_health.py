"""Target health (pygate/upstream/health.py) and target choice (pygate/upstream/__init__.py).

The breaker and ``Upstream.pick`` are exercised directly; the active health
checker probes real loopback servers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from pygate.config import UpstreamConfig
from pygate.context import Context, Identity
from pygate.errors import ServiceUnavailable
from pygate.upstream import Target, Upstream
from pygate.upstream.health import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.conftest import UpstreamFactory, free_port


def make_ctx(client_ip: str = "10.1.1.1", identity: Identity | None = None) -> Context:
    ctx = Context(request_id="r", client_ip=client_ip, method="GET", path="/", start=0.0)
    ctx.identity = identity
    return ctx


def make_upstream(count: int = 3, **options: Any) -> Upstream:
    targets = [f"http://127.0.0.1:{9000 + i}" for i in range(count)]
    return Upstream("users", UpstreamConfig.model_validate({"targets": targets, **options}))


# ---------------------------------------------------------------------------
# Breaker
# ---------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = Breaker(limit=3, cooldown=10.0)
    owner = object()
    assert not breaker.failure(0.0, owner)
    assert not breaker.failure(0.0, owner)
    breaker.success(owner)  # a success in between starts the count again
    assert not breaker.failure(0.0, owner)
    assert not breaker.failure(0.0, owner)
    assert breaker.state(0.0) == CLOSED and breaker.allows(0.0)
    assert breaker.failure(1.0, owner)
    assert breaker.state(1.0) == OPEN
    assert not breaker.allows(10.9)
    assert breaker.allows(11.0) and breaker.state(11.0) == HALF_OPEN


def test_half_open_lets_one_trial_through_and_its_outcome_decides() -> None:
    breaker = Breaker(limit=1, cooldown=10.0)
    trial, other = object(), object()
    breaker.failure(0.0, other)
    breaker.claim(10.0, trial)
    assert not breaker.allows(10.0)  # nobody follows the trial
    assert breaker.state(10.0) == HALF_OPEN
    assert not breaker.success(other)  # a request sent before the ejection does not count
    assert breaker.success(trial)
    assert breaker.state(10.0) == CLOSED and breaker.allows(10.0)

    breaker.failure(20.0, other)
    breaker.claim(30.0, trial)
    assert breaker.failure(30.5, trial)  # the trial failed: open for another cooldown
    assert breaker.state(31.0) == OPEN
    assert not breaker.allows(40.4) and breaker.allows(40.5)


def test_a_trial_without_outcome_is_given_up_or_lapses() -> None:
    breaker = Breaker(limit=1, cooldown=10.0)
    first, second = object(), object()
    breaker.failure(0.0, first)
    breaker.claim(10.0, first)
    breaker.abandon(11.0, second)  # not the trial's owner: nothing changes
    assert not breaker.allows(11.0)
    breaker.abandon(11.0, first)
    assert breaker.allows(11.0)
    breaker.claim(12.0, second)  # never reported: another trial after a cooldown
    assert not breaker.allows(21.9) and breaker.allows(22.0)


# ---------------------------------------------------------------------------
# Upstream.pick
# ---------------------------------------------------------------------------


def test_pick_skips_unhealthy_and_excluded_targets_and_503s_when_none_is_left() -> None:
    upstream = make_upstream(3)
    a, b, c = upstream.targets
    ctx = make_ctx()
    upstream.set_health(a, False)
    assert {upstream.pick(ctx) for _ in range(6)} == {b, c}
    assert {upstream.pick(ctx, frozenset({b})) for _ in range(4)} == {c}
    with pytest.raises(ServiceUnavailable, match=r"no healthy target in upstream 'users'$"):
        upstream.pick(ctx, frozenset({b, c}))
    upstream.set_health(b, False)
    upstream.set_health(c, False)
    with pytest.raises(ServiceUnavailable) as info:
        upstream.pick(ctx)
    assert info.value.status == 503
    upstream.set_health(b, True)
    assert upstream.pick(ctx) is b
    assert not upstream.all_up


def test_pick_with_breakers_ejects_and_sends_one_trial() -> None:
    upstream = make_upstream(2, breaker={"failures": 2, "cooldown": "50ms"})
    a, b = upstream.targets
    ctx = make_ctx()
    upstream.failed(a, ctx, "status 503")
    assert upstream.all_up
    upstream.failed(a, ctx, "status 503")
    assert not upstream.all_up
    assert {upstream.pick(ctx) for _ in range(4)} == {b}
    upstream.failed(b, ctx, "refused")
    upstream.failed(b, ctx, "refused")
    with pytest.raises(ServiceUnavailable, match="circuit breaker is open"):
        upstream.pick(ctx)
    assert [t["breaker"] for t in upstream.describe()] == [OPEN, OPEN]
    time.sleep(0.06)  # the cooldown is the behaviour under test
    trial_ctx = make_ctx()
    first = upstream.pick(trial_ctx)
    second = upstream.pick(trial_ctx)
    assert {first, second} == {a, b}  # one trial each, then nothing is left
    with pytest.raises(ServiceUnavailable):
        upstream.pick(make_ctx())
    upstream.succeeded(first, trial_ctx)
    upstream.failed(second, trial_ctx, "status 502")
    assert {upstream.pick(make_ctx()) for _ in range(4)} == {first}
    assert [t["breaker"] for t in upstream.describe()].count(CLOSED) == 1


def test_hash_keys_follow_hash_on() -> None:
    headers = CIMultiDict({"X-Tenant": "acme"})
    alice = Identity(id="u1", consumer="alice")
    by_ip = make_upstream(balancer="hash")
    assert by_ip.hash_key(make_ctx("10.0.0.7"), headers) == "10.0.0.7"
    by_consumer = make_upstream(balancer="hash", hash_on="consumer")
    assert by_consumer.hash_key(make_ctx("10.0.0.7", alice), headers) == "alice"
    assert by_consumer.hash_key(make_ctx("10.0.0.7", Identity(id="u2")), None) == "u2"
    assert by_consumer.hash_key(make_ctx("10.0.0.7"), headers) == "10.0.0.7"
    by_header = make_upstream(balancer="hash", hash_on="header:x-tenant")
    assert by_header.hash_key(make_ctx("10.0.0.7"), headers) == "acme"
    assert by_header.hash_key(make_ctx("10.0.0.7"), CIMultiDict()) == "10.0.0.7"


def test_hash_pick_is_sticky_and_moves_only_the_keys_of_a_target_that_goes_down() -> None:
    upstream = make_upstream(4, balancer="hash", hash_on="header:X-User")
    ctx = make_ctx()
    users = [f"user-{i}" for i in range(400)]

    def owners() -> dict[str, Target]:
        return {u: upstream.pick(ctx, headers=CIMultiDict({"X-User": u})) for u in users}

    before = owners()
    assert owners() == before
    assert len(set(before.values())) == 4
    down = upstream.targets[2]
    upstream.set_health(down, False)
    during = owners()
    assert all(during[u] is before[u] for u in users if before[u] is not down)
    assert down not in during.values()
    upstream.set_health(down, True)
    assert owners() == before


# ---------------------------------------------------------------------------
# Active health checks
# ---------------------------------------------------------------------------


async def test_health_checks_take_a_target_out_and_bring_it_back(
        upstream: UpstreamFactory) -> None:
    status = {"code": 200}

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=status["code"])

    up = await upstream(routes={"GET /healthz": health})
    closed = free_port()
    pool = Upstream("users", UpstreamConfig.model_validate({
        "targets": [up.url, f"http://127.0.0.1:{closed}"],
        "health": {"path": "/healthz", "interval": "20ms", "timeout": "500ms",
                   "unhealthy": 2, "healthy": 3},
    }))
    live, dead = pool.targets
    changes: asyncio.Queue[tuple[Target, bool]] = asyncio.Queue()
    assert pool.checker is not None
    record = pool.checker.on_change

    def on_change(target: Target, healthy: bool) -> None:
        record(target, healthy)
        changes.put_nowait((target, healthy))

    pool.checker.on_change = on_change
    await pool.start()
    try:
        assert await asyncio.wait_for(changes.get(), 5) == (dead, False)
        assert not dead.healthy and live.healthy
        failed_probes = len([s for s in up.seen if s.path == "/healthz"])
        status["code"] = 500
        assert await asyncio.wait_for(changes.get(), 5) == (live, False)
        with pytest.raises(ServiceUnavailable):
            pool.pick(make_ctx())
        status["code"] = 302  # 3xx counts as healthy
        assert await asyncio.wait_for(changes.get(), 5) == (live, True)
        assert len([s for s in up.seen if s.path == "/healthz"]) >= failed_probes + 2 + 3
        assert up.last.headers["User-Agent"] == "pygate-health-check"
        tasks = list(pool.checker.tasks)
    finally:
        await pool.close()
    assert all(task.done() for task in tasks)
