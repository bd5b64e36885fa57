"""This process's part of the admin answers: its status, upstreams, stats, cache purge.

One :class:`Local` per serving process (the single process, or each worker).
The admin listener asks it directly; with workers, the other workers' are asked
through their control sockets (:mod:`.control`), which call :meth:`Local.handle`.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..app import Gateway
from ..config import AdminSection
from ..errors import NotFound, ServiceUnavailable
from .stats import Stats
from .views import purge_cache, upstream_table

if TYPE_CHECKING:
    from ..reload import Reloader
    from ..server import Running
    from .control import Cluster


class Local:
    """The running gateway of this process, as the admin sees it."""

    def __init__(self, gateway: Gateway, cluster: Cluster | None = None) -> None:
        self.cluster = cluster
        self.worker = cluster.worker if cluster is not None else 1
        self.running: Running | None = None
        self.reloader: Reloader | None = None
        self.stats: Stats | None = None
        self.draining = False
        self.started = time.time()
        self._clock = time.monotonic()
        self.admin: AdminSection | None = gateway.config.admin

    def attach(self, running: Running, reloader: Reloader) -> None:
        """The gateway listens: record per-route stats from now on, follow reloads."""
        self.running = running
        self.reloader = reloader
        self.stats = running.pipeline.stats = Stats()
        reloader.listeners.append(lambda gateway, _: self._follow(gateway))

    def _follow(self, gateway: Gateway) -> None:
        # A reload that drops [admin] keeps the listener (restart-only) and its token.
        if gateway.config.admin is not None:
            self.admin = gateway.config.admin

    @property
    def token(self) -> str | None:
        """The admin token to require (the last loaded configuration's), if any."""
        token = self.admin.token if self.admin is not None else None
        return token if token and token.strip() else None

    @property
    def ready(self) -> bool:
        """Serving: the first configuration listens, and no drain has started."""
        return self.running is not None and not self.draining

    def gateway(self) -> Gateway:
        if self.running is None:
            raise ServiceUnavailable("the gateway is starting")
        return self.running.gateway

    def config_info(self) -> dict[str, Any]:
        running = self.running
        if running is None:
            return {"file": None, "sha256": None}
        source = running.gateway.config.source
        return {"file": os.path.abspath(source) if not source.startswith("<") else source,
                "sha256": running.config_sha256}

    def status(self) -> dict[str, Any]:
        running = self.running
        return {
            "worker": self.worker,
            "pid": os.getpid(),
            "generation": running.generation if running is not None else None,
            "ready": self.ready,
            "draining": self.draining,
            "uptime_s": round(time.monotonic() - self._clock, 3),
            "in_flight": running.pipeline.in_flight if running is not None else 0,
            "routes": len(running.gateway.router.routes) if running is not None else 0,
            "config": self.config_info(),
        }

    def stats_snapshot(self) -> dict[str, Any]:
        snapshot = self.stats.snapshot() if self.stats is not None else Stats.empty()
        return {"worker": self.worker, "pid": os.getpid(), **snapshot}

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        """One question of the admin listener (through a control socket, or directly)."""
        if op == "status":
            return self.status()
        if op == "upstreams":
            return upstream_table(self.gateway())
        if op == "stats":
            return self.stats_snapshot()
        if op == "purge":
            removed = await purge_cache(self.gateway(), args.get("prefix"), args.get("route"))
            return {"removed": removed}
        raise NotFound(f"unknown admin operation {op!r}")


__all__ = ["Local"]
