"""Route kinds: what a matched route does with a request.

A route has exactly one kind, named by its key in the configuration:
``upstream`` (proxy), ``aggregate`` or ``graphql``. Each kind is one module
here with one :class:`RouteKind` object, registered in :data:`KINDS`; the
configuration checks, the gateway's compilation, ``pygate routes`` and
``pygate explain``, and the request pipeline ask the kind instead of testing
fields. Adding a kind: a module with its :class:`RouteKind`, its line in
:data:`KINDS`, and its configuration model as a field of
:class:`pygate.config.RouteConfig` (docs/architecture.md).

At load, :meth:`RouteKind.compile` turns a route's configuration into a
:class:`Handler`; per request, the pipeline calls :meth:`Handler.serve` after
the route's authenticate and admit hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from ..chain import Chain
    from ..config import Config, ConfigIssue, RouteConfig
    from ..context import Context
    from ..router import Route
    from ..upstream import Upstream
    from ..upstream.forward import Streamer


class Routed:
    """One request as routing left it: what a kind's ``serve`` needs besides ``ctx``.

    ``path`` is the normalized path, ``encoded`` its percent-encoded form,
    ``query`` the raw query string; ``forwarded_for`` and ``trusted`` are the
    outgoing ``X-Forwarded-For`` and whether the peer is a trusted proxy
    (:class:`pygate.sanitize.ForwardedRule`).
    """

    __slots__ = ("encoded", "forwarded_for", "path", "query", "trusted")

    def __init__(self, path: str, encoded: str, query: str, forwarded_for: str,
                 trusted: bool) -> None:
        self.path = path
        self.encoded = encoded
        self.query = query
        self.forwarded_for = forwarded_for
        self.trusted = trusted


@dataclass
class Build:
    """What compiling a route needs from the gateway being built."""

    config: Config
    upstream_for: Callable[[str], Upstream]  # a name from [upstreams], or a URL


class Handler(Protocol):
    """A compiled route of one kind."""

    async def serve(self, request: web.BaseRequest, ctx: Context, chain: Chain,
                    routed: Routed) -> tuple[web.StreamResponse, Streamer | None]:
        """Answer the request: the unsent response and, for a streamed body, its streamer.

        :raise GatewayError: a refusal or an upstream failure (a problem document).
        """
        ...

    def explain(self, route: Route, method: str, params: Mapping[str, str], routed: Routed,
                headers: Mapping[str, str]) -> list[str]:
        """Lines for ``pygate explain``: where this request would go (sends nothing)."""
        ...


class RouteKind(Protocol):
    """One kind of route: its configuration key, checks and compilation."""

    key: str

    def upstream_refs(self, spec: Any) -> list[tuple[str, str]]:
        """``(upstream name or URL, key path below the route)`` for each upstream named."""
        ...

    def target(self, spec: Any) -> str:
        """The TARGET column of ``pygate routes``."""
        ...

    def compile(self, route: Route, spec: Any, build: Build
                ) -> tuple[Handler | None, list[ConfigIssue]]:
        """The route's handler, or None and the configuration errors (with key paths)."""
        ...


def _kinds() -> dict[str, RouteKind]:
    from .aggregate import AGGREGATE
    from .graphql import GRAPHQL
    from .proxy import PROXY

    return {kind.key: kind for kind in (PROXY, AGGREGATE, GRAPHQL)}


KINDS: dict[str, RouteKind] = _kinds()
"""Every route kind, by its configuration key."""


def kind_of(route: RouteConfig) -> tuple[RouteKind, Any] | None:
    """The route's kind and its configuration (None when it has none or several)."""
    found = [(KINDS[key], spec) for key in KINDS if (spec := getattr(route, key)) is not None]
    return found[0] if len(found) == 1 else None
