"""Target health: active checks (background probes) and the passive breaker.

Active checks (``health = {...}``) probe every target of an upstream on its
own interval, from a task started with the gateway and cancelled when it
stops; ``unhealthy`` consecutive failed probes take a target out,
``healthy`` consecutive good ones bring it back. The breaker
(``breaker = {...}``) watches real traffic: ``failures`` consecutive upstream
failures eject the target for ``cooldown``; then one trial request is let
through (half-open), and its outcome closes or re-opens the breaker.

A target serves traffic only while both agree. The two are independent:
a breaker trial does not wait for a health check, nor the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from ..config import HealthConfig
from .client import ConnectError, Pool, TlsError, UpstreamError

if TYPE_CHECKING:
    from . import Target
    from .tls import ClientTls

log = structlog.get_logger("pygate")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class Breaker:
    """The passive circuit breaker of one target.

    ``open_until`` is ``0.0`` while closed, else the loop time from which a
    trial request may go. The request that takes the trial (``claim``) pushes
    ``open_until`` one more ``cooldown`` ahead, so that no other request
    follows it, and owns the trial: only its outcome closes or re-opens the
    breaker. A trial whose outcome never comes (the client went away) is given
    up (``abandon``), or lapses after ``cooldown`` when nobody reports at all.
    """

    __slots__ = ("cooldown", "failures", "limit", "open_until", "trial")

    def __init__(self, limit: int, cooldown: float) -> None:
        self.limit = limit
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self.trial: object | None = None

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def state(self, now: float) -> str:
        if not self.open_until:
            return CLOSED
        if self.trial is not None or now >= self.open_until:
            return HALF_OPEN
        return OPEN

    def claim(self, now: float, owner: object) -> None:
        """A request was sent to the target: it is the trial when the breaker is half-open."""
        if self.open_until:
            self.trial = owner
            self.open_until = now + self.cooldown

    def failure(self, now: float, owner: object) -> bool:
        """Count a failure; true when this opened (or re-opened) the breaker."""
        if self.open_until:
            if self.trial is None or self.trial is not owner:
                return False  # a request sent before the ejection: already counted out
            self.trial = None
            self.open_until = now + self.cooldown
            return True
        self.failures += 1
        if self.failures < self.limit:
            return False
        self.failures = 0
        self.open_until = now + self.cooldown
        return True

    def success(self, owner: object) -> bool:
        """Count a success; true when this closed the breaker (the trial succeeded)."""
        if self.open_until:
            if self.trial is None or self.trial is not owner:
                return False
            self.trial = None
            self.open_until = 0.0
            return True
        self.failures = 0
        return False

    def abandon(self, now: float, owner: object) -> None:
        """The trial ended without an outcome: let the next request try at once."""
        if self.trial is not None and self.trial is owner:
            self.trial = None
            self.open_until = now


class HealthChecker:
    """Active health checks of an upstream's targets: one probing task per target.

    A probe is ``GET <target><path>`` through pygate's own upstream client, on
    a one-connection pool of the probe's own (so that a saturated request pool
    never delays a probe into a false failure); a 2xx or 3xx answer within
    ``timeout`` is a success, anything else (another status, a refused or reset
    connection, a failed TLS handshake, a timeout) a failure. The first probe goes
    out as soon as the gateway starts, then one every ``interval``. An https target
    is probed with its upstream's TLS settings (``tls``), as requests are sent.
    """

    def __init__(self, upstream: str, targets: Sequence[Target], config: HealthConfig,
                 on_change: Callable[[Target, bool], None], *,
                 tls: ClientTls | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.targets = list(targets)
        self.config = config
        self.on_change = on_change
        self.path = config.path if config.path.startswith("/") else "/" + config.path
        self.tasks: list[asyncio.Task[None]] = []
        self.pools: list[Pool] = []

    def start(self) -> None:
        from . import pool_for

        loop = asyncio.get_running_loop()
        timeout = self.config.timeout
        self.pools = [
            pool_for(t.url, self.tls, limit=1, connect_timeout=timeout, read_timeout=timeout)
            for t in self.targets
        ]
        self.tasks = [
            loop.create_task(self._run(index), name=f"pygate-health-{self.upstream}")
            for index in range(len(self.targets))
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        for pool in self.pools:
            await pool.close()
        self.pools = []

    async def _run(self, index: int) -> None:
        target = self.targets[index]
        pool = self.pools[index]
        config = self.config
        successes = failures = 0
        while True:
            reason = await self.probe(pool)
            if reason is None:
                successes, failures = successes + 1, 0
                if not target.healthy and successes >= config.healthy:
                    log.info("target healthy", upstream=self.upstream, target=target.label,
                             successes=successes)
                    self.on_change(target, True)
            else:
                successes, failures = 0, failures + 1
                if target.healthy and failures >= config.unhealthy:
                    log.warning("target unhealthy", upstream=self.upstream,
                                target=target.label, failures=failures, reason=reason)
                    self.on_change(target, False)
            await asyncio.sleep(config.interval)

    async def probe(self, pool: Pool) -> str | None:
        """``None`` when the target answered 2xx/3xx in time, else why it did not."""
        try:
            async with asyncio.timeout(self.config.timeout):
                response = await pool.request("GET", self.path,
                                              [("User-Agent", "pygate-health-check")])
                try:
                    await response.read()
                finally:
                    response.close()
            if 200 <= response.status < 400:
                return None
            return f"status {response.status}"
        except TimeoutError:
            return "timed out"
        except TlsError as exc:
            return f"TLS handshake failed: {exc.detail}"
        except ConnectError:
            return "connection refused"
        except UpstreamError as exc:
            return exc.reason
        except Exception as exc:  # a probe never ends the checks
            log.exception("health check failed", upstream=self.upstream)
            return type(exc).__name__
