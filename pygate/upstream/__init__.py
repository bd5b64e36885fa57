"""Upstream pools: targets, their HTTP client session, and the choice of a target.

Each upstream owns one aiohttp ``ClientSession`` with a bounded keep-alive
connection pool and the upstream's timeouts. :meth:`Upstream.pick` is the seam
for balancing and health (round-robin over the targets here).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from ..config import UpstreamConfig
from ..context import Context
from ..errors import ServiceUnavailable


@dataclass(eq=False)
class Target:
    url: URL
    weight: int = 1
    healthy: bool = True
    active: int = 0
    label: str = field(default="")

    def __post_init__(self) -> None:
        self.label = self.label or str(self.url)


class Upstream:
    """A named pool of targets behind one client session."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        # How errors name this upstream to clients: a route's inline URL is an
        # internal address, so it is never shown.
        self.label = "the upstream" if "://" in name else f"upstream {name!r}"
        self.config = config
        self.targets = [Target(URL(t.url), t.weight) for t in config.targets]
        self.session: aiohttp.ClientSession | None = None
        self._rr = itertools.cycle(range(len(self.targets)))

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=60,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            read_bufsize=2**16,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
            await asyncio.sleep(0)

    def pick(self, ctx: Context, exclude: frozenset[Target] = frozenset()) -> Target:
        """The target for this request (round-robin over the healthy ones)."""
        targets = self.targets
        if len(targets) == 1:
            target = targets[0]
            if target.healthy and target not in exclude:
                return target
        else:
            for _ in range(len(targets)):
                target = targets[next(self._rr)]
                if target.healthy and target not in exclude:
                    return target
        raise ServiceUnavailable(f"no healthy target in {self.label}")
