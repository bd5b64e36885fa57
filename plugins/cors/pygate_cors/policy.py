"""CORS decisions: which origins match, what a preflight answers, what an actual response gets.

Pure: no aiohttp, no pluggy. Origins are compared in their serialized form
(``scheme://host[:port]``, lower case, default port omitted), the way browsers
send them. A wildcard origin ``https://*.example.com`` matches any subdomain of
``example.com`` at any depth over the same scheme and port, never
``example.com`` itself nor ``evilexample.com``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

_ORIGIN = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>\d{1,5}))?$"
)
_SUBDOMAIN = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)+$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_TOKEN_SPLIT = re.compile(r"\s*,\s*")

# Response headers the gateway owns on CORS routes: an upstream's copies are removed.
CORS_RESPONSE_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Max-Age",
)


def split_origin(origin: str) -> tuple[str, str, str] | None:
    """``(scheme, host, port)`` of a serialized origin, port ``""`` when default; else None."""
    found = _ORIGIN.match(origin.lower())
    if found is None:
        return None
    scheme, host, port = found.group("scheme"), found.group("host"), found.group("port") or ""
    if port and port == _DEFAULT_PORTS.get(scheme):
        port = ""
    return scheme, host, port


def normalize_origin(origin: str) -> str | None:
    parts = split_origin(origin)
    if parts is None:
        return None
    scheme, host, port = parts
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def wildcard_parts(entry: str) -> tuple[str, str, str] | None:
    """``(scheme, ".suffix", port)`` of ``scheme://*.suffix[:port]``; None if not one."""
    scheme, sep, rest = entry.lower().partition("://*.")
    if not sep:
        return None
    parts = split_origin(f"{scheme}://{rest}")
    if parts is None or parts[1].startswith("[") or "." not in parts[1]:
        return None  # "https://*.com" would admit half the web
    return parts[0], "." + parts[1], parts[2]


def check_origin(entry: str) -> str:
    """Validate one configured origin; raise ``ValueError`` naming what is expected."""
    if entry in ("*", "null") or wildcard_parts(entry) is not None:
        return entry
    if normalize_origin(entry) is not None:
        return entry
    raise ValueError('expected an origin like "https://app.example.com" (scheme, host and '
                     'optional port; no path), a wildcard subdomain like '
                     f'"https://*.example.com", or "*"; found {entry!r}')


@dataclass(frozen=True, slots=True)
class Origins:
    """The configured origins, compiled for matching."""

    any: bool = False
    exact: frozenset[str] = frozenset()
    wildcards: tuple[tuple[str, str, str], ...] = ()  # (scheme, ".suffix", port)

    @classmethod
    def compile(cls, entries: Iterable[str]) -> Origins:
        exact: set[str] = set()
        wildcards: list[tuple[str, str, str]] = []
        any_origin = False
        for entry in entries:
            if entry == "*":
                any_origin = True
            elif entry == "null":
                exact.add("null")
            elif (wildcard := wildcard_parts(entry)) is not None:
                wildcards.append(wildcard)
            else:
                normalized = normalize_origin(entry)
                assert normalized is not None, "validated by check_origin"
                exact.add(normalized)
        return cls(any=any_origin, exact=frozenset(exact), wildcards=tuple(wildcards))

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        if origin == "null":
            return "null" in self.exact
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        if normalized in self.exact:
            return True
        parts = split_origin(origin)
        assert parts is not None
        scheme, host, port = parts
        for w_scheme, suffix, w_port in self.wildcards:
            if (scheme == w_scheme and port == w_port and host.endswith(suffix)
                    and _SUBDOMAIN.match(host[: len(host) - len(suffix) + 1])):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a CORS decision needs, built once per route at configuration load."""

    origins: Origins
    methods: tuple[str, ...]
    headers: frozenset[str] | None  # lower-cased; None reflects what the preflight asks for
    header_list: str
    expose: str
    max_age: int | None
    credentials: bool
    vary: bool = field(init=False)

    def __post_init__(self) -> None:
        # "*" without credentials answers every origin alike; anything else depends on Origin
        object.__setattr__(self, "vary", not (self.origins.any and not self.credentials))

    def allow_origin_value(self, origin: str) -> str:
        return "*" if self.origins.any and not self.credentials else origin


@dataclass(frozen=True, slots=True)
class Preflight:
    """A preflight decision: the headers of a 204, or why it is refused."""

    headers: dict[str, str] | None
    refusal: str | None = None


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    """``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
    return (method == "OPTIONS" and "Origin" in headers
            and "Access-Control-Request-Method" in headers)


def preflight(policy: Policy, origin: str, method: str, request_headers: str | None) -> Preflight:
    """Answer a preflight: allowed origin, method and headers give the 204's headers."""
    if not policy.origins.allows(origin):
        return Preflight(None, "CORS preflight refused: origin not allowed")
    if method not in policy.methods:
        return Preflight(None, f"CORS preflight refused: method {method[:32]} not allowed")
    requested = [h for h in _TOKEN_SPLIT.split((request_headers or "").strip()) if h]
    if policy.headers is None:
        allow_headers = ", ".join(requested)
    else:
        for name in requested:
            if name.lower() not in policy.headers:
                return Preflight(None, f"CORS preflight refused: header {name[:64]} not allowed")
        allow_headers = policy.header_list
    headers = {"Access-Control-Allow-Origin": policy.allow_origin_value(origin),
               "Access-Control-Allow-Methods": ", ".join(policy.methods)}
    if allow_headers:
        headers["Access-Control-Allow-Headers"] = allow_headers
    if policy.max_age is not None:
        headers["Access-Control-Max-Age"] = str(policy.max_age)
    if policy.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if policy.vary:
        headers["Vary"] = "Origin"
    return Preflight(headers)


def add_vary(headers: CIMultiDict[str], name: str) -> None:
    """Add ``name`` to ``Vary`` unless it (or ``*``) is already there."""
    values = [v for value in headers.getall("Vary", []) for v in _TOKEN_SPLIT.split(value) if v]
    lowered = {v.lower() for v in values}
    if name.lower() in lowered or "*" in lowered:
        return
    headers.popall("Vary", None)
    headers["Vary"] = ", ".join([*values, name])


def decorate(policy: Policy, origin: str | None, headers: CIMultiDict[str]) -> None:
    """The CORS headers of an actual (non-preflight) response, set in place.

    The upstream's own ``Access-Control-*`` headers are removed first: on a CORS
    route the gateway alone decides.
    """
    for name in CORS_RESPONSE_HEADERS:
        headers.popall(name, None)
    if policy.vary:
        add_vary(headers, "Origin")
    if origin is None or not policy.origins.allows(origin):
        return
    headers["Access-Control-Allow-Origin"] = policy.allow_origin_value(origin)
    if policy.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if policy.expose:
        headers["Access-Control-Expose-Headers"] = policy.expose
