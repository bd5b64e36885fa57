"""The bounds one HTTP/2 connection is held to (docs/security.md, "HTTP/2").

Each number here is per connection. ``gateway.max_concurrent_streams`` (advertised
as SETTINGS_MAX_CONCURRENT_STREAMS) is the only one in the configuration; the
others follow from it or are fixed, as nginx and Envoy fix theirs.
"""

from __future__ import annotations

import time

STREAM_WINDOW = 65_535
"""The receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE, the protocol's
default): the most request body the gateway holds for a stream that is not
consuming it (it acknowledges DATA only as the body is read)."""

CONNECTION_WINDOW = 1 << 20
"""The receive window of the whole connection: the most request body the gateway
holds for all of a connection's streams together."""

MAX_HEADER_LIST = 65_536
"""SETTINGS_MAX_HEADER_LIST_SIZE: a request head whose decoded fields (RFC 9113's
count: name, value and 32 bytes each) exceed this closes the connection
(ENHANCE_YOUR_CALM), since HPACK's state cannot be kept after refusing half a block."""

MAX_FRAME = 16_384
"""SETTINGS_MAX_FRAME_SIZE: the protocol's default and smallest."""

RESET_WINDOW = 10.0
"""Seconds in which a connection's reset budget refills entirely."""

CONTROL_BURST = 1000
"""PING, SETTINGS, PRIORITY, empty DATA and unknown frames a connection may send at
once (CVE-2019-9512, -9515, -9518 floods) before GOAWAY ENHANCE_YOUR_CALM..."""

CONTROL_RATE = 100.0
"""...and per second after that."""


def hard_stream_limit(max_concurrent_streams: int) -> int:
    """Open streams beyond which h2 itself closes the connection (PROTOCOL_ERROR).

    h2 counts a read's HEADERS frames before the protocol sees any of them, so the
    protocol's REFUSED_STREAM (for streams beyond ``max_concurrent_streams``) needs
    this headroom: a client may open up to this many before it has read the
    advertised limit. Each new stream costs h2 a walk over the open ones, so the
    headroom is bounded too.
    """
    return max_concurrent_streams + max(max_concurrent_streams, 100)


def reset_burst(max_concurrent_streams: int) -> int:
    """Streams a connection may reset (or have refused) at once before GOAWAY
    ENHANCE_YOUR_CALM (CVE-2023-44487, rapid reset): twice the streams it may run
    at once, and at least 200 (a browser leaving a page resets what it had in flight)."""
    return max(200, 2 * max_concurrent_streams)


class Budget:
    """A token bucket: ``burst`` spent at once, refilled at ``rate`` per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.stamp = time.monotonic()

    def spend(self, amount: float = 1.0) -> bool:
        """Take ``amount``; False once the bucket is overdrawn (the connection's done)."""
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - amount
        self.tokens = tokens
        self.stamp = now
        return tokens >= 0


__all__ = [
    "CONNECTION_WINDOW",
    "CONTROL_BURST",
    "CONTROL_RATE",
    "MAX_FRAME",
    "MAX_HEADER_LIST",
    "RESET_WINDOW",
    "STREAM_WINDOW",
    "Budget",
    "hard_stream_limit",
    "reset_burst",
]
