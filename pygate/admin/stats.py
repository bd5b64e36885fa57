"""Per-route request counts and latency histograms, for the admin listener's ``/stats``.

Recorded by the core only when ``[admin]`` is configured (the pipeline's
``stats`` is ``None`` otherwise: one attribute test per request). The request
itself only appends its context and its end time to a list; one loop callback
per loop iteration (scheduled by the first request that finds the list empty)
files them, after the responses have been written.

Counters only grow, from the process's start (reloads keep them). A snapshot
is plain JSON (docs/operations.md, "GET /stats"); snapshots of several workers
add up bucket by bucket (:func:`merge`).
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

from ..context import Context

BUCKETS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500,
    750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 30000, 60000,
)
"""Upper bounds (inclusive, milliseconds) of the latency buckets; one more bucket holds
everything slower. Steps of at most 1.5x up to 10 s, so an interpolated p50 or p99 is
within a bucket's width of the truth."""


class RouteStats:
    """One route's counters: requests, errors (status >= 500), latency."""

    __slots__ = ("errors", "latency", "requests", "sum_ms")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.sum_ms = 0.0
        self.latency = [0] * (len(BUCKETS_MS) + 1)

    def add(self, status: int, ms: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        self.sum_ms += ms
        self.latency[bisect.bisect_left(BUCKETS_MS, ms)] += 1

    def snapshot(self) -> dict[str, Any]:
        latency = self.latency
        used = len(latency)
        while used and not latency[used - 1]:
            used -= 1  # trailing empty buckets are left out
        return {"requests": self.requests, "errors": self.errors,
                "sum_ms": round(self.sum_ms, 3), "latency": latency[:used]}


class Stats:
    """The counters of one process, by route name (requests matching no route apart)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.unrouted = RouteStats()
        self._pending: list[Context] = []
        self._loop = loop or asyncio.get_running_loop()

    def note(self, ctx: Context) -> None:
        """A request is answered (called by the pipeline; files it later)."""
        pending = self._pending
        pending.append(ctx)
        if len(pending) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """File the requests noted since the last flush."""
        pending, self._pending = self._pending, []
        routes = self.routes
        for ctx in pending:
            route = ctx.route
            if route is None:
                counters = self.unrouted
            else:
                counters = routes.get(route.name) or routes.setdefault(route.name, RouteStats())
            counters.add(ctx.status, (ctx.end - ctx.start) * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        self.flush()
        return {"routes": {name: r.snapshot() for name, r in self.routes.items()},
                "unrouted": self.unrouted.snapshot()}

    @staticmethod
    def empty() -> dict[str, Any]:
        """The snapshot of a process that has recorded nothing yet."""
        return {"routes": {}, "unrouted": RouteStats().snapshot()}


def _add(into: dict[str, Any], counters: dict[str, Any]) -> None:
    into["requests"] += counters["requests"]
    into["errors"] += counters["errors"]
    into["sum_ms"] = round(into["sum_ms"] + counters["sum_ms"], 3)
    latency = into["latency"]
    for index, count in enumerate(counters["latency"]):
        if index < len(latency):
            latency[index] += count
        else:
            latency.append(count)


def _empty() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "sum_ms": 0.0, "latency": []}


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' snapshots as one: counts and buckets added up."""
    routes: dict[str, dict[str, Any]] = {}
    unrouted = _empty()
    for snap in snapshots:
        for name, counters in snap["routes"].items():
            _add(routes.setdefault(name, _empty()), counters)
        _add(unrouted, snap["unrouted"])
    return {"routes": routes, "unrouted": unrouted}


def quantile(latency: list[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of a histogram, in ms, interpolated within its bucket
    (what a dashboard computes from the difference of two snapshots); None if empty."""
    total = sum(latency)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(latency):
        if count and seen + count >= rank:
            low = BUCKETS_MS[index - 1] if index else 0.0
            high = BUCKETS_MS[index] if index < len(BUCKETS_MS) else low
            return low + (high - low) * (rank - seen) / count
        seen += count
    return BUCKETS_MS[-1]


__all__ = ["BUCKETS_MS", "RouteStats", "Stats", "merge", "quantile"]
