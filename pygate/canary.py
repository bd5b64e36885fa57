"""Canary releases: which of a route's two upstreams serves a request.

A proxy route with ``[routes.canary]`` (PRODUCT.md section 11) sends ``weight``
percent of its requests to the canary upstream instead of its own. How a
request's side is chosen, in order:

1. ``header = "X-Canary"``: ``X-Canary: always`` pins the request to the canary,
   ``X-Canary: never`` away from it (any other value: as if absent);
2. ``sticky`` other than ``"none"``: the caller's key (its IP, its consumer, a
   header's or a cookie's value) is hashed into one of 10,000 buckets; buckets
   below ``weight * 100`` are the canary's. The hash is BLAKE2b of the canary
   upstream's name and the key, the same in every worker, node and restart (never
   Python's salted ``hash()``), so a caller stays on its side while ``weight`` stays,
   and raising the weight only moves callers to the canary;
3. otherwise a smooth split: every request adds ``weight`` to a running count and
   goes to the canary each time the count passes 100, so over any 100 requests
   (of one worker) exactly ``weight`` go to the canary, spread evenly.

Pure logic: no I/O. The side is the whole decision; the chosen upstream's own
balancer, health checks, retries and breaker then apply as on any route.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .config.traffic import CanaryConfig
    from .context import Context

Side = TypeVar("Side")

BUCKETS = 10_000
"""Sticky callers are spread over this many buckets: weights to a hundredth of a percent."""


def basis_points(percent: float) -> int:
    """A percentage as a share of :data:`BUCKETS` (``12.5`` -> ``1250``)."""
    return round(percent * BUCKETS / 100)


def bucket(salt: str, key: str) -> int:
    """The sticky bucket of ``key`` (0 to ``BUCKETS - 1``), the same in every process:
    the first 8 bytes of the BLAKE2b digest of ``SALT\nKEY`` in UTF-8, big-endian, modulo
    :data:`BUCKETS`. Any text hashes, lone surrogates from undecodable header bytes too."""
    text = f"{salt}\n{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % BUCKETS


def cookie_value(headers: Mapping[str, str], name: str) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` header(s), or None.

    A plain reading of ``name=value; name2=value2`` (RFC 6265, section 5.4): no
    unquoting, nothing that can fail on what a client sends.
    """
    getall = getattr(headers, "getall", None)
    lines = getall("Cookie", ()) if getall is not None else [headers.get("Cookie", "")]
    for line in lines:
        for pair in line.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                return value.strip()
    return None


class Split:
    """The smooth split of requests: exactly ``weight`` percent, evenly spread.

    Each request adds the weight (in basis points) to a running count; when the
    count reaches :data:`BUCKETS` the request is the canary's and the count drops
    by that much. Weight 10 sends every tenth request to the canary, weight 50
    every other one, weight 0 none and weight 100 all.
    """

    __slots__ = ("count", "step")

    def __init__(self, percent: float) -> None:
        self.step = basis_points(percent)
        self.count = 0

    def canary(self) -> bool:
        count = self.count + self.step
        if count >= BUCKETS:
            self.count = count - BUCKETS
            return True
        self.count = count
        return False


class Canary(Generic[Side]):
    """A route's canary: its settings compiled at load, and the choice per request.

    ``Side`` is what the two sides are (the gateway's :class:`~pygate.upstream.Upstream`
    objects; anything in the unit tests).
    """

    __slots__ = ("cookie", "header", "main", "name", "pin", "split", "sticky", "target",
                 "threshold", "weight")

    def __init__(self, config: CanaryConfig, main: Side, target: Side, name: str) -> None:
        self.main = main
        self.target = target  # the canary upstream
        self.name = name  # the canary upstream's name: the salt of the sticky hash
        self.weight = config.weight
        self.threshold = basis_points(config.weight)
        self.split = Split(config.weight)
        self.pin = config.header
        kind, _, named = config.sticky.partition(":")
        self.sticky = kind  # "none", "ip", "consumer", "header" or "cookie"
        self.header = named if kind == "header" else None
        self.cookie = named if kind == "cookie" else None

    def choose(self, headers: Mapping[str, str], ctx: Context) -> Side:
        """The side that serves this request (after ``authenticate``: the consumer is known)."""
        pin = self.pin
        if pin is not None:
            value = headers.get(pin)
            if value is not None:
                value = value.strip().lower()
                if value == "always":
                    return self.target
                if value == "never":
                    return self.main
        if self.sticky == "none":
            return self.target if self.split.canary() else self.main
        return self.target if self.bucket_of(headers, ctx) < self.threshold else self.main

    def sticky_key(self, headers: Mapping[str, str], ctx: Context) -> str:
        """Who the caller is for ``sticky``: ``ip=ADDRESS``, ``c=CONSUMER``, ``h=VALUE`` or
        ``k=VALUE`` (a cookie). A consumer falls back to the IP for anonymous requests
        (as the rate-limit plugin's ``key`` does), and so do a missing or empty header
        or cookie."""
        if self.sticky == "consumer":
            identity = ctx.identity
            if identity is not None:
                return "c=" + str(identity.get("consumer"))
        else:
            key = self.request_key(headers)
            if key is not None:
                return key
        return "ip=" + ctx.client_ip

    def request_key(self, headers: Mapping[str, str]) -> str | None:
        """The sticky key a header or a cookie gives (``h=VALUE``, ``k=VALUE``), or None."""
        if self.header is not None:
            value = headers.get(self.header)
            if value:
                return "h=" + value
        elif self.cookie is not None:
            value = cookie_value(headers, self.cookie)
            if value:
                return "k=" + value
        return None

    def bucket_of(self, headers: Mapping[str, str], ctx: Context) -> int:
        return bucket(self.name, self.sticky_key(headers, ctx))

    def describe(self) -> str:
        """How the side is chosen, for ``pygate explain``."""
        share = f"{self.weight:g}% of requests"
        if self.sticky == "none":
            how = "spread evenly"
        elif self.sticky in ("ip", "consumer"):
            how = f"sticky by {self.sticky}" + (
                " (the client IP when anonymous)" if self.sticky == "consumer" else "")
        else:
            how = (f"sticky by {self.sticky} {self.header or self.cookie} "
                   "(the client IP without one)")
        pin = (f"; {self.pin}: always / never pins a request to / away from it"
               if self.pin is not None else "")
        return f"{share}, {how}{pin}"

    def explain(self, headers: Mapping[str, str]) -> str:
        """Which side this request would take, as far as the request alone tells."""
        pin = self.pin
        if pin is not None:
            value = (headers.get(pin) or "").strip().lower()
            if value in ("always", "never"):
                side = "the canary" if value == "always" else "the route's upstream"
                return f"{side} ({pin}: {value})"
        if self.threshold == 0:
            return "the route's upstream (weight 0)"
        if self.threshold >= BUCKETS:
            return "the canary (weight 100)"
        if self.sticky == "none":
            return f"the canary for {self.weight:g}% of requests, taken in turn"
        key = self.request_key(headers)
        if key is not None:
            found = bucket(self.name, key)
            side = "the canary" if found < self.threshold else "the route's upstream"
            return (f"{side} (the {self.sticky} {self.header or self.cookie}: bucket {found} "
                    f"of {BUCKETS}, the canary's are those below {self.threshold})")
        return f"decided by the caller's {'consumer or ' if self.sticky == 'consumer' else ''}IP"
