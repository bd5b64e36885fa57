"""One request: the bearer token, its introspection, the identity or a refusal.

A missing token is 401 with ``WWW-Authenticate: Bearer realm="pygate"``; a
token the identity provider does not vouch for is 401 with ``Bearer
error="invalid_token"``; an identity provider that cannot answer is 503 (the
token may be fine), logged with the plugin's name.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from pygate.plugin import Identity, ServiceUnavailable, Unauthorized

from .config import IntrospectionConfig
from .introspect import IdpUnavailable, InactiveToken, Introspector

log = structlog.get_logger("pygate")

PLUGIN = "oauth2-introspection"
STATE_CLAIMS = "oauth2-introspection.claims"  # ctx.state key holding the response


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header (another scheme: ``None``)."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def missing_token() -> Unauthorized:
    return Unauthorized("a bearer token is required",
                        headers={"WWW-Authenticate": 'Bearer realm="pygate"'})


def invalid_token(description: str) -> Unauthorized:
    safe = description.replace("\\", "").replace('"', "'")
    return Unauthorized(description, headers={
        "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'})


async def authenticate(request: web.BaseRequest, config: IntrospectionConfig,
                       introspector: Introspector | None, state: dict[str, Any],
                       request_id: str | None = None) -> Identity | None:
    """The caller's identity, ``None`` for an anonymous request when ``optional``.

    ``introspector`` is the one ``startup`` made for ``config`` (``None``: it did not run).
    """
    token = bearer_token(request)
    if token is None:
        if config.optional:
            return None
        raise missing_token()
    if not token.isascii() or not token.isprintable():
        # no token has such bytes (RFC 6750 b64token): refused without asking the IdP
        raise invalid_token("the token is malformed")
    if introspector is None:
        log.error("introspection not started", plugin=PLUGIN, request_id=request_id)
        raise ServiceUnavailable("the identity provider is unavailable; try again later")
    try:
        result = await introspector.introspect(token)
    except InactiveToken as refusal:
        raise invalid_token(refusal.description) from None
    except IdpUnavailable as failure:
        log.warning("token introspection failed", plugin=PLUGIN, reason=failure.reason,
                    status=failure.status, request_id=request_id)
        raise ServiceUnavailable("the identity provider is unavailable; try again later"
                                 ) from None
    state[STATE_CLAIMS] = result.claims
    return result.identity
