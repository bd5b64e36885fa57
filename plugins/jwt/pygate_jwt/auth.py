"""One request: find the token, verify it (or find it in the cache), give the identity.

Refusals follow RFC 6750: a missing token gets ``WWW-Authenticate: Bearer
realm="pygate"`` with no error code; a bad one gets ``Bearer
error="invalid_token", error_description="..."``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from aiohttp import web

from pygate.plugin import Identity, ServiceUnavailable, Unauthorized

from .config import JwtConfig
from .jwks import JwksCache
from .state import Runtime
from .verify import (
    InvalidToken,
    Verified,
    accepted_algorithm,
    decode,
    decode_with_any,
    expiry,
    identity_from,
    unverified_header,
)

STATE_CLAIMS = "jwt.claims"  # ctx.state key holding the verified claims


def extract_token(request: web.BaseRequest, sources: Sequence[tuple[str, str]]) -> str | None:
    """The token from the first configured source that carries one.

    ``sources`` are ``(kind, name)`` pairs (``JwtConfig.token_sources``).
    ``header:Authorization`` takes the ``Bearer`` scheme only (another scheme
    counts as no token, for another plugin to handle); other headers may carry
    the bare token or ``Bearer TOKEN``.
    """
    for kind, name in sources:
        value: str | None
        if kind == "header":
            value = request.headers.get(name)
            if value is not None:
                scheme, _, rest = value.strip().partition(" ")
                if scheme.lower() == "bearer":
                    value = rest
                elif name.lower() == "authorization":
                    value = None
        elif kind == "cookie":
            value = request.cookies.get(name)
        else:
            value = request.query.get(name)
        if value is not None:
            value = value.strip()
            if value:
                return value
    return None


def missing_token() -> Unauthorized:
    return Unauthorized("a bearer token is required",
                        headers={"WWW-Authenticate": 'Bearer realm="pygate"'})


def invalid_token(description: str) -> Unauthorized:
    safe = description.replace("\\", "").replace('"', "'")
    return Unauthorized(description, headers={
        "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'})


async def verify(token: str, config: JwtConfig, jwks: JwksCache | None) -> Verified:
    """All checks for one token; raises :class:`InvalidToken` naming the failed one.

    ``jwks`` is the config's key set when it names a ``jwks_url``.
    """
    header = unverified_header(token)
    algorithm = accepted_algorithm(header, config.algorithms)
    key = config.static_key
    if key is not None:
        claims = decode(token, key, algorithm, config)
    else:
        if jwks is None:
            raise ServiceUnavailable("jwt: the key set is not loaded (the gateway did not "
                                     "run the plugin's startup)")
        kid = header.get("kid")
        keys = await jwks.keys_for(kid if isinstance(kid, str) else None, algorithm)
        claims = decode_with_any(token, [jwk.key for jwk in keys], algorithm, config)
    return Verified(identity=identity_from(claims, config.claims),
                    claims=MappingProxyType(claims),
                    expires=expiry(claims))


async def authenticate(request: web.BaseRequest, config: JwtConfig, runtime: Runtime | None,
                       state: dict[str, Any]) -> Identity | None:
    """The caller's identity, ``None`` for an anonymous request when ``optional``.

    ``runtime`` is what ``startup`` prepared for ``config`` (``None``: it did not run).
    """
    token = extract_token(request, config.token_sources)
    if token is None:
        if config.optional:
            return None
        raise missing_token()
    if runtime is None:
        raise ServiceUnavailable("jwt: the plugin did not start on this gateway")
    cache = runtime.tokens
    verified = cache.get(token)
    if verified is None:
        try:
            verified = await verify(token, config, runtime.jwks)
        except InvalidToken as error:
            raise invalid_token(error.description) from None
        cache.put(token, verified)
    claims: Mapping[str, Any] = verified.claims
    state[STATE_CLAIMS] = claims
    return verified.identity
