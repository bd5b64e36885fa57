"""Keys from the identity provider's JWKS, fetched with the gateway's HTTP client.

The key set is fetched on first use, kept for ``jwks_ttl``, and fetched again
when a token names a ``kid`` it does not hold (key rotation without a restart).
Every fetch, whatever its cause, is rate-limited: at most one attempt per
``jwks_min_refresh``, so a flood of tokens with random ``kid`` values costs the
identity provider one request per interval, and concurrent requests wait for
the fetch in flight instead of starting their own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import structlog

from pygate.plugin import ServiceUnavailable

from .keys import Jwk, parse_jwks
from .verify import InvalidToken

log = structlog.get_logger("pygate")

PLUGIN = "jwt"
MAX_JWKS_BYTES = 1024 * 1024


class JwksUnavailable(Exception):
    """The key set could not be fetched or read (the message names why, not the keys)."""


class JwksCache:
    """One JWKS URL's keys, shared by every route that names the same URL and timings."""

    def __init__(self, url: str, client: aiohttp.ClientSession | None, *, min_refresh: float,
                 ttl: float, timeout: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.url = url
        self.client = client
        self.min_refresh = min_refresh
        self.ttl = ttl
        self.timeout = timeout
        self.fetches = 0  # attempts made, for tests and metrics
        self._clock = clock
        self._keys: list[Jwk] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def keys_for(self, kid: str | None, algorithm: str) -> list[Jwk]:
        """The keys that may verify a token with this ``kid`` and ``alg``.

        :raises InvalidToken: no such key, even after a (rate-limited) refetch.
        :raises ServiceUnavailable: no key set could be fetched yet.
        """
        if self._fetched_at is None or self._clock() - self._fetched_at >= self.ttl:
            await self.refresh()
        if self._fetched_at is None:
            raise ServiceUnavailable("the signing keys of the identity provider are "
                                     "unavailable; try again later")
        found = self._lookup(kid, algorithm)
        if not found:
            await self.refresh()  # a rotated key? at most once per min_refresh
            found = self._lookup(kid, algorithm)
        if found:
            return found
        if kid is not None and any(key.kid == kid for key in self._keys):
            raise InvalidToken("the token algorithm does not fit its signing key")
        raise InvalidToken("the token signing key is unknown")

    def _lookup(self, kid: str | None, algorithm: str) -> list[Jwk]:
        if kid is not None:
            return [key for key in self._keys if key.kid == kid and key.fits(algorithm)]
        return [key for key in self._keys if key.fits(algorithm)]

    async def refresh(self) -> None:
        """Fetch the key set unless an attempt was made less than ``min_refresh`` ago."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self.min_refresh:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._fetch()
            except JwksUnavailable as exc:
                log.warning("jwks fetch failed", plugin=PLUGIN, url=self.url, error=str(exc),
                            keeping=len(self._keys))
                return
            self._keys = keys
            self._fetched_at = now
            log.info("jwks fetched", plugin=PLUGIN, url=self.url, keys=len(keys),
                     kids=[key.kid for key in keys])

    async def _fetch(self) -> list[Jwk]:
        if self.client is None or self.client.closed:
            raise JwksUnavailable("the gateway's HTTP client is not running")
        try:
            async with self.client.get(
                self.url,
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise JwksUnavailable(f"the JWKS URL answered {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksUnavailable("the key set is larger than 1MB")
        except TimeoutError:
            raise JwksUnavailable(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise JwksUnavailable(f"{type(exc).__name__}") from None
        try:
            return parse_jwks(json.loads(body))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise JwksUnavailable(f"not a JWKS document: {exc}"[:200]) from None
