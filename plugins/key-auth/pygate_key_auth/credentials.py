"""Reading the key from a request, turning it into an identity, hiding it from upstreams."""

from __future__ import annotations

from collections.abc import Mapping

from pygate.plugin import Identity, Unauthorized, UpstreamRequest

from .config import KeyAuthConfig
from .keys import strip_query_param

CHALLENGE = {"WWW-Authenticate": 'Key realm="pygate"'}


def presented_key(config: KeyAuthConfig, headers: Mapping[str, str],
                  query: Mapping[str, str]) -> str | None:
    """The key the client sent: the header first, then the query parameter if configured."""
    key = headers.get(config.header)
    if not key and config.query is not None:
        key = query.get(config.query)
    return key or None


def identify(config: KeyAuthConfig, headers: Mapping[str, str],
             query: Mapping[str, str]) -> Identity | None:
    """The consumer's identity; ``None`` when no key was sent and the plugin is optional.

    :raises Unauthorized: no key (unless ``optional``), or a key that names no consumer.
    """
    key = presented_key(config, headers, query)
    if key is None:
        if config.optional:
            return None
        where = f"the {config.header} header"
        if config.query is not None:
            where += f" or the {config.query} query parameter"
        raise Unauthorized(f"an API key is required (send it in {where})", headers=CHALLENGE)
    consumer = config.index.find(key)
    if consumer is None:
        raise Unauthorized("invalid API key", headers=CHALLENGE)
    return Identity(id=consumer.name, roles=consumer.roles, consumer=consumer.name,
                    source="key-auth")


def hide(config: KeyAuthConfig, upstream_request: UpstreamRequest) -> None:
    """Remove the key header and query parameter from the upstream request."""
    upstream_request.headers.popall(config.header, None)
    if config.query is not None:
        upstream_request.query = strip_query_param(upstream_request.query, config.query)
