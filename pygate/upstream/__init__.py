"""Upstream pools: targets, their connections, and the choice of a target.

Each target owns a bounded keep-alive connection pool (:mod:`.client`) for
HTTP calls; each upstream also owns a balancer built once from the
configuration (:mod:`.balancer`), and the health of its targets
(:mod:`.health`: active checks started and stopped with the gateway, and the
passive breaker fed by :func:`.forward.send`). :meth:`Upstream.pick` chooses a
target among those that are healthy, not ejected and not excluded.

An upstream with ``https://`` targets builds its TLS settings once, when it is
built from the configuration (:mod:`.tls`: the ``SSLContext``, the name sent as
SNI and checked, the client certificate); its pools, its health checks and its
WebSocket handshakes all use them.

A reload builds new :class:`Upstream` objects; one whose configuration did not
change adopts the running one's targets (:meth:`Upstream.adopt`: their
keep-alive pools, health, breakers and in-flight counts) and its health checks,
so the old and the new gateway share them until the old one stops. A change of
its ``tls`` table, or of the files it names, is a change: new pools.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from yarl import URL

from ..config import ConfigError, ConfigIssue, UpstreamConfig, key_path
from ..context import Context
from ..errors import ServiceUnavailable
from .balancer import Balancer, make_balancer
from .client import Pool
from .health import CLOSED, Breaker, HealthChecker
from .tls import ClientTls, TlsSettingError, client_tls, has_https_target

if TYPE_CHECKING:
    from ..mirror import Copies

log = structlog.get_logger("pygate")


@dataclass(eq=False)
class Target:
    """One target of a pool and its live state.

    ``healthy`` is the active health checks' verdict, ``breaker`` the passive
    breaker (``None`` without ``breaker = {...}``), ``active`` the requests in
    flight to it from this worker: counted from the moment a request is sent
    until its response body is finished (or it failed).
    """

    url: URL
    weight: int = 1
    healthy: bool = True
    active: int = 0
    label: str = field(default="")
    breaker: Breaker | None = None
    pool: Pool | None = None  # keep-alive connections for HTTP calls, open while started

    def __post_init__(self) -> None:
        self.label = self.label or str(self.url)

    @property
    def key(self) -> str:
        """The target's place on the hash ring."""
        return self.label

    def finished(self) -> None:
        """A request to this target is over (its response was released or closed)."""
        self.active -= 1


def pool_for(url: URL, tls: ClientTls | None, *, limit: int, connect_timeout: float,
             read_timeout: float) -> Pool:
    """A connection pool to the target at ``url``, with its upstream's TLS settings."""
    host = url.raw_host or ""
    https = url.scheme == "https"
    return Pool(url.scheme, host, url.port or (443 if https else 80), limit=limit,
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                ssl_context=tls.context if https and tls is not None else None,
                server_name=tls.hostname(host) if https and tls is not None else None)


def _digest(tls: ClientTls | None) -> str | None:
    return tls.digest if tls is not None else None


class Upstream:
    """A named group of targets, each with its connection pool."""

    def __init__(self, name: str, config: UpstreamConfig, base_dir: str = ".") -> None:
        self.name = name
        # How errors name this upstream to clients: a route's inline URL is an
        # internal address, so it is never shown.
        self.label = "the upstream" if "://" in name else f"upstream {name!r}"
        self.config = config
        self.retries = config.retries
        # https targets: the context, SNI name and client certificate, built now (at load)
        self.tls: ClientTls | None = self._client_tls(name, config, base_dir)
        self.targets = [Target(URL(t.url), t.weight) for t in config.targets]
        if config.breaker is not None:
            for target in self.targets:
                target.breaker = Breaker(config.breaker.failures, config.breaker.cooldown)
        self.balancer: Balancer = make_balancer(config.balancer, self.targets)
        self._single = self.targets[0] if len(self.targets) == 1 else None
        self._hashing = config.balancer == "hash" and self._single is None
        self._hash_header = (config.hash_on.partition(":")[2]
                             if config.hash_on.startswith("header:") else None)
        self._hash_consumer = config.hash_on == "consumer"
        # True while every target is healthy with a closed breaker: pick's fast path.
        self.all_up = True
        self.checker = (HealthChecker(name, self.targets, config.health, self.set_health,
                                      tls=self.tls)
                        if config.health is not None else None)
        # The upstreams (of successive gateways) sharing these targets, pools and checks.
        self._sharing: list[Upstream] = [self]
        self._adopted = False
        # Copies of requests mirrored here ([routes.mirror], pygate.mirror): set by the
        # first route that mirrors to this upstream; a reload keeps them with the pools.
        self.mirrored: Copies | None = None

    def adopt(self, running: Upstream) -> bool:
        """Take over ``running``'s targets, pools and health checks if its configuration
        is the same as this one's (a reload); True when adopted.

        Call it before :meth:`start`. The pools stay open until the last upstream
        sharing them is closed, so the keep-alive connections, the health verdicts,
        the breakers' state and the in-flight counts (least-conn) carry over.
        """
        if (running.name != self.name or running.config != self.config or self._adopted
                or any(t.pool is None for t in running.targets)
                or _digest(running.tls) != _digest(self.tls)):  # renewed certificate files
            return False
        self.targets = running.targets
        self.tls = running.tls  # the same settings: the one the adopted pools use
        self.balancer = running.balancer
        self._single = running._single
        self.checker = running.checker
        if running.mirrored is not None:
            self.mirrored = running.mirrored
        self.all_up = running.all_up
        self._sharing = running._sharing
        self._sharing.append(self)
        self._adopted = True
        return True

    async def start(self) -> None:
        if self._adopted:
            return  # the pools and checks of the upstream adopted are running
        if self.tls is not None:
            self.tls.warn(self.name)
        for target in self.targets:
            target.pool = pool_for(target.url, self.tls, limit=self.config.max_connections,
                                   connect_timeout=self.config.connect_timeout,
                                   read_timeout=self.config.read_timeout)
        if self.checker is not None:
            self.checker.start()

    @staticmethod
    def _client_tls(name: str, config: UpstreamConfig, base_dir: str) -> ClientTls | None:
        """The TLS settings of an upstream with https targets; None without any.

        The load-time check (:func:`.tls.check_upstream_tls`) has reported what is
        wrong with them already; a file changed since then is still a configuration
        error, never a traceback.
        """
        if not has_https_target(config):
            return None
        try:
            return client_tls(config.tls, base_dir=base_dir)
        except TlsSettingError as exc:
            raise ConfigError(f"upstream {name!r}", [
                ConfigIssue(key_path(("upstreams", name, "tls", key)), message)
                for key, message in exc.problems]) from None

    async def close(self) -> None:
        sharing = self._sharing
        if self in sharing:
            sharing.remove(self)
        if sharing:
            return  # a newer gateway's upstream keeps using the pools
        if self.mirrored is not None:  # mirror copies in flight: a short grace, then cut
            await self.mirrored.settle()
        if self.checker is not None:
            await self.checker.stop()
        for target in self.targets:
            if target.pool is not None:
                await target.pool.close()
                target.pool = None

    # -- choosing a target ---------------------------------------------------

    def pick(self, ctx: Context, exclude: frozenset[Target] = frozenset(), *,
             headers: Mapping[str, str] | None = None) -> Target:
        """The target for this request, by the upstream's balancer.

        :param exclude: targets not to choose (those a retry already tried).
        :param headers: the outgoing request headers, for ``hash_on = "header:NAME"``
            (without them, or without that header, the client IP is the key).
        :raise ServiceUnavailable: no target is healthy, closed-breaker and not excluded.

        When the chosen target's breaker is half-open, this request becomes its
        trial; report its outcome with :meth:`succeeded`/:meth:`failed` (or
        :meth:`abandoned`), else the trial lapses after ``cooldown``.
        """
        single = self._single
        if self.all_up and not exclude:
            if single is not None:
                return single
            key = self.hash_key(ctx, headers) if self._hashing else ""
            return self.targets[self.balancer.choose(key, None)]
        now = time.monotonic()
        allowed = [
            t.healthy and (t.breaker is None or t.breaker.allows(now)) and t not in exclude
            for t in self.targets
        ]
        if not any(allowed):
            raise self._unavailable(now, exclude)
        if single is not None:
            target = single
        else:
            key = self.hash_key(ctx, headers) if self._hashing else ""
            target = self.targets[self.balancer.choose(key, allowed)]
        if target.breaker is not None:
            target.breaker.claim(now, ctx)
        return target

    def hash_key(self, ctx: Context, headers: Mapping[str, str] | None) -> str:
        """What the ``hash`` balancer hashes: a header, the consumer, or the client IP."""
        if self._hash_header is not None:
            value = headers.get(self._hash_header) if headers is not None else None
            if value:
                return value
        elif self._hash_consumer and ctx.identity is not None:
            consumer = ctx.identity.get("consumer")
            if consumer:
                return str(consumer)
        return ctx.client_ip

    def _unavailable(self, now: float, exclude: frozenset[Target]) -> ServiceUnavailable:
        if any(t.healthy and t.breaker is not None and not t.breaker.allows(now)
               for t in self.targets if t not in exclude):
            return ServiceUnavailable(
                f"no healthy target in {self.label}: the circuit breaker is open")
        return ServiceUnavailable(f"no healthy target in {self.label}")

    # -- health and breaker --------------------------------------------------

    def set_health(self, target: Target, healthy: bool) -> None:
        """The active health checks' verdict on ``target``."""
        target.healthy = healthy
        self._refresh()

    def succeeded(self, target: Target, owner: object) -> None:
        """A request to ``target`` got an answer that is not 502/503/504."""
        breaker = target.breaker
        if breaker is not None and breaker.success(owner):
            log.info("breaker closed", upstream=self.name, target=target.label)
            self._refresh()

    def failed(self, target: Target, owner: object, reason: str) -> None:
        """A request to ``target`` failed (connect error, reset, timeout, 502/503/504)."""
        breaker = target.breaker
        if breaker is not None and breaker.failure(time.monotonic(), owner):
            log.warning("breaker open", upstream=self.name, target=target.label,
                        reason=reason, cooldown_s=breaker.cooldown)
            self._refresh()

    def abandoned(self, target: Target, owner: object) -> None:
        """A request to ``target`` ended without an outcome (the client went away)."""
        breaker = target.breaker
        if breaker is not None:
            breaker.abandon(time.monotonic(), owner)

    def _refresh(self) -> None:
        all_up = all(t.healthy and (t.breaker is None or not t.breaker.open_until)
                     for t in self.targets)
        for upstream in self._sharing:  # every gateway's view of these targets
            upstream.all_up = all_up

    def describe(self) -> list[dict[str, Any]]:
        """The targets and their state (for the admin listener)."""
        now = time.monotonic()
        return [
            {"target": t.label, "weight": t.weight, "healthy": t.healthy,
             "breaker": t.breaker.state(now) if t.breaker is not None else CLOSED,
             "active": t.active}
            for t in self.targets
        ]
