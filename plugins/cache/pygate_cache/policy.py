"""The caching rules, pure: Cache-Control, freshness, Vary, keys and validators.

Nothing here does I/O or knows about pluggy; every function takes header
mappings (``multidict`` mappings, so repeated header lines count) and plain
values, so the rules are unit-tested directly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from multidict import MultiMapping

STORABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 410})
"""Statuses stored: those RFC 9111 (section 4.2.2) lets a cache store without explicit
freshness, minus the ones whose body depends on the request (206) or that the gateway
itself produces for errors (405, 414, 501), and 308, as the issue lists them."""

ENTRY_OVERHEAD = 64
"""Bytes counted per stored entry on top of its body and headers (for ``max_bytes``)."""

NOT_STORED_HEADERS = frozenset({
    "age", "content-length", "x-cache", "x-request-id", "set-cookie",
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
    "trailer", "proxy-authenticate",
})
"""Response headers never kept in an entry: computed again on each hit, or per request."""

NOT_MODIFIED_HEADERS = ("cache-control", "content-location", "date", "etag", "expires",
                        "last-modified", "vary")
"""Headers a 304 answer repeats from the stored response (RFC 9110 section 15.4.5)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored response.

    :param stored_at: wall-clock time (seconds) the response was generated: when it
        was stored, minus the ``Age`` it already had from the upstream.
    :param expires_at: wall-clock time it stops being fresh.
    :param vary: the lower-case request header names of its ``Vary`` header.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    expires_at: float
    vary: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes counted against ``max_bytes``: body, header lines and an overhead."""
        return (len(self.body) + sum(len(k) + len(v) + 4 for k, v in self.headers)
                + ENTRY_OVERHEAD)

    def age(self, now: float) -> int:
        """Whole seconds since the response was generated (never negative)."""
        return max(0, int(now - self.stored_at))

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


# ---------------------------------------------------------------------------
# Cache-Control
# ---------------------------------------------------------------------------

_DIRECTIVE = re.compile(r'([^,=\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?')


def directives(values: Iterable[str]) -> dict[str, str | None]:
    """Cache-Control header lines -> ``{lower-case name: value or None}``; first one wins."""
    found: dict[str, str | None] = {}
    for line in values:
        for match in _DIRECTIVE.finditer(line):
            name = match.group(1).lower()
            value = match.group(2)
            if value is not None and value.startswith('"'):
                value = value[1:-1]
            found.setdefault(name, value)
    return found


def delta_seconds(value: str | None) -> int | None:
    """A ``delta-seconds`` value (``max-age=60``), or ``None`` when absent or invalid."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


@dataclass(frozen=True, slots=True)
class RequestRules:
    """What the client's request lets the cache do.

    :param lookup: the request may be answered from the cache.
    :param store: its response may be stored.
    :param max_age: the oldest entry (seconds) the client accepts, or ``None``.
    """

    lookup: bool
    store: bool
    max_age: int | None = None


ANY_REQUEST = RequestRules(lookup=True, store=True)


def request_rules(headers: MultiMapping[str], honour: bool) -> RequestRules:
    """The client's ``Cache-Control`` (or ``Pragma: no-cache``) as :class:`RequestRules`.

    ``no-store``: not served from the cache, response not stored. ``no-cache``,
    ``max-age=0`` and HTTP/1.0 ``Pragma: no-cache``: not served from the cache, the
    fresh response is stored. ``max-age=N``: entries older than N seconds are not
    served. With ``honour`` false every request may be answered from the cache.
    """
    if not honour:
        return ANY_REQUEST
    lines = headers.getall("Cache-Control", ())
    if not lines:
        pragma = headers.get("Pragma")
        if pragma is not None and "no-cache" in pragma.lower():
            return RequestRules(lookup=False, store=True)
        return ANY_REQUEST
    cc = directives(lines)
    if "no-store" in cc:
        return RequestRules(lookup=False, store=False)
    if "no-cache" in cc:
        return RequestRules(lookup=False, store=True)
    if "max-age" in cc:
        max_age = delta_seconds(cc["max-age"])
        if max_age == 0:
            return RequestRules(lookup=False, store=True)
        return RequestRules(lookup=True, store=True, max_age=max_age)
    return ANY_REQUEST


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a response may be stored and for how long.

    :param reason: why not (``"status"``, ``"no-store"``...), empty when storable.
    :param lifetime: the freshness lifetime in seconds.
    :param age: the age the response already had (its ``Age`` header).
    """

    store: bool
    reason: str = ""
    lifetime: float = 0.0
    age: float = 0.0


def response_verdict(status: int, headers: MultiMapping[str], *, ttl: float, honour: bool,
                     now: float, authorized: bool = False) -> Verdict:
    """Decide whether a response may be stored, and its freshness lifetime.

    Never stored: a status outside :data:`STORABLE_STATUSES`, ``Set-Cookie``,
    ``Vary: *``, ``Cache-Control: no-store`` or ``private``. With ``honour`` (the
    ``cache_control`` setting): ``no-cache`` is not stored either, and the lifetime
    is ``s-maxage``, else ``max-age``, else ``Expires`` minus ``Date``, else ``ttl``,
    minus the ``Age`` the response already has. Without it, the lifetime is ``ttl``.

    :param authorized: the request carried ``Authorization`` and no gateway plugin
        identified the caller: stored only when the response allows it explicitly
        (``public``, ``s-maxage`` or ``must-revalidate``; RFC 9111 section 3.5).
    """
    if status not in STORABLE_STATUSES:
        return Verdict(False, "status")
    if "Set-Cookie" in headers:
        return Verdict(False, "set-cookie")
    if vary_names(headers) is None:
        return Verdict(False, "vary")
    cc = directives(headers.getall("Cache-Control", ()))
    if "no-store" in cc:
        return Verdict(False, "no-store")
    if "private" in cc:
        return Verdict(False, "private")
    if authorized and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return Verdict(False, "authorization")
    if not honour:
        return Verdict(True, lifetime=ttl)
    if "no-cache" in cc:
        return Verdict(False, "no-cache")
    lifetime: float = ttl
    if "s-maxage" in cc:
        lifetime = delta_seconds(cc["s-maxage"]) or 0
    elif "max-age" in cc:
        lifetime = delta_seconds(cc["max-age"]) or 0
    elif "Expires" in headers:
        lifetime = _expires_lifetime(headers, now)
    age = delta_seconds(headers.get("Age")) or 0
    if lifetime - age <= 0:
        return Verdict(False, "stale")
    return Verdict(True, lifetime=lifetime, age=age)


def _expires_lifetime(headers: MultiMapping[str], now: float) -> float:
    expires = _http_date(headers.get("Expires"))
    if expires is None:
        return 0.0  # an invalid Expires ("0") means already expired
    date = _http_date(headers.get("Date"))
    return expires - (date if date is not None else now)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# ---------------------------------------------------------------------------
# Vary and keys
# ---------------------------------------------------------------------------


def vary_names(headers: MultiMapping[str]) -> tuple[str, ...] | None:
    """The sorted lower-case header names of ``Vary`` (``()`` without), ``None`` for ``*``."""
    names: set[str] = set()
    for line in headers.getall("Vary", ()):
        for part in line.split(","):
            name = part.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def variant(names: Iterable[str], request_headers: MultiMapping[str]) -> str:
    """A digest of the request's values of the headers named by ``Vary``.

    A missing header and an empty one differ; repeated lines are joined in order.
    """
    values = []
    for name in names:
        lines = request_headers.getall(name, ())
        values.append([name, ", ".join(line.strip() for line in lines) if lines else None])
    raw = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = "".join(chr(c) for c in range(33, 127))


def cache_key(route: str, path: str, query: str, consumer: str | None = None) -> str:
    """``ROUTE:PATH?QUERY`` plus `` c=CONSUMER`` on per-consumer entries.

    The method is not part of the key (HEAD is answered from a GET entry). The
    route name and consumer are percent-encoded (no ``:`` or space in them), the
    normalized path is percent-encoded where it holds ``?``, ``%``, spaces or
    non-ASCII characters, the raw query is kept as sent. The ``?`` is always
    there, so ``"users:/users/7?"`` is the prefix of every query of that path.
    """
    key = (f"{quote(route, safe='', errors='surrogatepass')}:"
           f"{quote(path, safe=_PATH_SAFE, errors='surrogatepass')}?"
           f"{quote(query, safe=_QUERY_SAFE, errors='surrogatepass')}")
    if consumer is not None:
        key += " c=" + quote(consumer, safe="", errors="surrogatepass")
    return key


def route_prefix(route: str) -> str:
    """The key prefix of every entry of one route (for :func:`pygate_cache.purge`)."""
    return quote(route, safe="", errors="surrogatepass") + ":"


# ---------------------------------------------------------------------------
# Stored headers and conditional requests
# ---------------------------------------------------------------------------


def stored_headers(headers: MultiMapping[str]) -> tuple[tuple[str, str], ...]:
    """The response header lines an entry keeps (see :data:`NOT_STORED_HEADERS`)."""
    return tuple((k, v) for k, v in headers.items() if k.lower() not in NOT_STORED_HEADERS)


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(request_headers: MultiMapping[str], entry: Entry) -> bool:
    """True when a conditional GET/HEAD may be answered 304 from ``entry``.

    ``If-None-Match`` (weak comparison, ``*`` matches any) takes precedence over
    ``If-Modified-Since`` (compared with the entry's ``Last-Modified``), as in RFC
    9110 section 13.2.2. Only 200 entries are answered 304.
    """
    if entry.status != 200:
        return False
    if_none_match = request_headers.getall("If-None-Match", ())
    if if_none_match:
        etag = entry.header("ETag")
        if etag is None:
            return False
        wanted = {_opaque(t) for line in if_none_match for t in line.split(",")}
        return "*" in wanted or _opaque(etag) in wanted
    since = _http_date(request_headers.get("If-Modified-Since"))
    modified = _http_date(entry.header("Last-Modified"))
    return since is not None and modified is not None and modified <= since


def not_modified_headers(entry: Entry) -> list[tuple[str, str]]:
    return [(k, v) for k, v in entry.headers if k.lower() in NOT_MODIFIED_HEADERS]
