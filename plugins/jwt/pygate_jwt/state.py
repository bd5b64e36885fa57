"""What the plugin keeps for the gateway's lifetime, in ``gateway.state("jwt")``.

Per effective config (keyed by ``id(config)``): its verified-token cache and,
for ``jwks_url``, its key set. Configs with the same JWKS URL and timings (the
routes that override nothing of it) share one key set, so the identity
provider is asked once for all of them. Made by ``startup`` with the gateway's
HTTP client; the settings themselves stay on the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from pygate.plugin import Gateway

from .config import JwtConfig
from .jwks import JwksCache
from .verify import TokenCache

NAME = "jwt"  # the entry point's name: the [plugins.jwt] table


@dataclass(slots=True)
class Runtime:
    """What one effective config uses on requests besides its settings."""

    tokens: TokenCache
    jwks: JwksCache | None = None


def prepare(gateway: Gateway) -> dict[int, Runtime]:
    """A :class:`Runtime` for every ``jwt`` config of ``gateway``, in its state."""
    state = gateway.state(NAME)
    key_sets: dict[tuple[str, float, float, float], JwksCache] = {}
    for config in gateway.configs(NAME):
        if not isinstance(config, JwtConfig):
            continue
        jwks = None
        if config.jwks_url is not None:
            ident = (config.jwks_url, config.jwks_min_refresh, config.jwks_ttl,
                     config.jwks_timeout)
            jwks = key_sets.get(ident)
            if jwks is None:
                jwks = key_sets[ident] = JwksCache(
                    config.jwks_url, gateway.client, min_refresh=config.jwks_min_refresh,
                    ttl=config.jwks_ttl, timeout=config.jwks_timeout)
        state[id(config)] = Runtime(TokenCache(config.cache_size, config.cache_ttl), jwks)
    return state
