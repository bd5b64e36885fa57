"""RFC 7662 token introspection, with a bounded cache of active results.

An active result is cached until the token's ``exp`` or for ``ttl``, whichever
comes first (a ``TTLCache`` bounds the time, every hit also checks ``exp``).
Concurrent requests with the same uncached token share one introspection call.
Tokens are kept in memory only as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from cachetools import TTLCache

from pygate.plugin import Gateway, Identity

from .config import IntrospectionConfig

SOURCE = "oauth2-introspection"
MAX_RESPONSE_BYTES = 256 * 1024


class IdpUnavailable(Exception):
    """The introspection endpoint could not give an answer (down, slow, not 200, not JSON)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class InactiveToken(Exception):
    """The identity provider says the token is not (or no longer) usable."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True, slots=True)
class Introspected:
    """An active token: the identity, the introspection response, its ``exp``."""

    identity: Identity
    claims: Mapping[str, Any]
    expires: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and value != ""


def roles_of(result: Mapping[str, Any]) -> tuple[str, ...]:
    """A ``roles`` member (string or list) if there is one, else ``scope`` split on spaces."""
    roles = result.get("roles")
    if isinstance(roles, str):
        return tuple(roles.split())
    if isinstance(roles, list):
        return tuple(str(role) for role in roles if _scalar(role))
    scope = result.get("scope")
    if isinstance(scope, str):
        return tuple(scope.split())
    return ()


def identity_from(result: Mapping[str, Any]) -> Identity:
    """The identity of an active token: ``sub``, else ``username``, else ``client_id``."""
    for member in ("sub", "username", "client_id"):
        value = result.get(member)
        if _scalar(value):
            subject = str(value)
            break
    else:
        raise InactiveToken("the token has no subject (sub, username or client_id)")
    fields = {key: value for key, value in result.items() if key != "active"}
    return Identity(id=subject, roles=roles_of(result), source=SOURCE, fields=fields)


def check(result: Any, now: float) -> Introspected:
    """Judge an introspection response; raises :class:`InactiveToken` when refused."""
    if not isinstance(result, dict):
        raise IdpUnavailable("the introspection response is not a JSON object")
    if result.get("active") is not True:
        raise InactiveToken("the token is not active")
    expires = _number(result.get("exp"))
    if expires is not None and expires <= now:
        raise InactiveToken("the token has expired")
    not_before = _number(result.get("nbf"))
    if not_before is not None and not_before > now:
        raise InactiveToken("the token is not valid yet")
    return Introspected(identity=identity_from(result), claims=MappingProxyType(dict(result)),
                        expires=expires)


class ResultCache:
    """Active results by token digest: bounded, at most ``ttl`` old, never past ``exp``."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: TTLCache[str, Introspected] | None = (
            TTLCache(maxsize=size, ttl=ttl, timer=clock) if size > 0 and ttl > 0 else None)

    def get(self, key: str) -> Introspected | None:
        if self._entries is None:
            return None
        found = self._entries.get(key)
        if found is None:
            return None
        if found.expires is not None and self._clock() >= found.expires:
            self._entries.pop(key, None)
            return None
        return found

    def put(self, key: str, result: Introspected) -> None:
        if self._entries is not None:
            self._entries[key] = result

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)


def basic_authorization(client_id: str, client_secret: str) -> str:
    """HTTP Basic client authentication as RFC 6749 section 2.3.1 has it: id and secret
    form-urlencoded first, then ``base64(id:secret)``."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class Introspector:
    """Introspects tokens at one endpoint with the gateway's HTTP client."""

    def __init__(self, config: IntrospectionConfig, client: aiohttp.ClientSession | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self.cache = ResultCache(config.cache_size, config.ttl, clock)
        self._authorization = basic_authorization(config.client_id,
                                                  config.client_secret.get_secret_value())
        self._inflight: dict[str, asyncio.Future[Introspected]] = {}

    async def introspect(self, token: str) -> Introspected:
        """The active result for ``token``, from the cache or the identity provider.

        :raises InactiveToken: the token is refused (not active, expired...).
        :raises IdpUnavailable: the identity provider gave no usable answer.
        """
        key = digest(token)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._introspect(key, token))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(pending)

    def _settle(self, key: str, done: asyncio.Future[Introspected]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: waiters re-raise it; none left is no warning

    async def _introspect(self, key: str, token: str) -> Introspected:
        result = check(await self.call(token), self.clock())
        self.cache.put(key, result)
        return result

    async def call(self, token: str) -> Any:
        """POST the token to the introspection endpoint; the parsed JSON response."""
        if self.client is None or self.client.closed:
            raise IdpUnavailable("the gateway's HTTP client is not running")
        form = {"token": token}
        if self.config.token_type_hint:
            form["token_type_hint"] = self.config.token_type_hint
        timeout = self.config.timeout
        try:
            async with self.client.post(
                self.config.introspection_url,
                data=form,
                headers={"Accept": "application/json", "Authorization": self._authorization},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise IdpUnavailable(f"the introspection endpoint answered "
                                         f"{response.status}", status=response.status)
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise IdpUnavailable("the introspection response is too large")
        except TimeoutError:
            raise IdpUnavailable(f"no answer within {timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise IdpUnavailable(f"cannot reach the introspection endpoint "
                                 f"({type(exc).__name__})") from None
        try:
            return json.loads(body)
        except ValueError:
            raise IdpUnavailable("the introspection response is not JSON") from None


# -- one introspector per distinct setting, in the gateway's state --------------


def prepare(gateway: Gateway) -> dict[int, Introspector]:
    """An :class:`Introspector` (with ``gateway.client``) for every config of the plugin,
    in ``gateway.state(SOURCE)`` keyed by ``id(config)``; configs with the same settings
    (routes that override nothing) share one, and so one result cache."""
    state = gateway.state(SOURCE)
    made: dict[tuple[object, ...], Introspector] = {}
    for config in gateway.configs(SOURCE):
        if not isinstance(config, IntrospectionConfig):
            continue
        key = config.cache_key()
        introspector = made.get(key)
        if introspector is None:
            introspector = made[key] = Introspector(config, gateway.client)
        state[id(config)] = introspector
    return state
