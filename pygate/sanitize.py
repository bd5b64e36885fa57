"""What the core does to every request before routing: PRODUCT.md section 4.

Path normalization, smuggling checks, hop-by-hop headers, X-Forwarded-*, the
client IP under the trusted-proxy rule, and the request ID. Pure functions over
strings and header mappings, so they are property-tested without a server.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from multidict import CIMultiDict, CIMultiDictProxy, istr

from .errors import BadFraming, BadRequest

PATH_SAFE = "/!$&'()*+,;=:@~"
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A path that is forwarded as it came: unreserved and sub-delims characters only.
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")

# Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded either way; so is
# every other Proxy-* header (PRODUCT.md section 4).
HOP_BY_HOP = (
    istr("Connection"),
    istr("Keep-Alive"),
    istr("Proxy-Connection"),
    istr("Proxy-Authenticate"),
    istr("Proxy-Authorization"),
    istr("TE"),
    istr("Trailer"),
    istr("Transfer-Encoding"),
    istr("Upgrade"),
)
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def normalize_path(raw: str) -> tuple[str, str, str]:
    """Split and normalize a request target.

    :return: ``(path, encoded, query)``: the decoded normalized path used for
        routing, the percent-encoded form forwarded upstream (the very same
        object as ``path`` when the client's path needed no change), and the raw
        query string.
    :raise BadRequest: invalid percent-encoding or UTF-8, an encoded ``/`` or NUL
        in a segment, a path that climbs above ``/``, or a target that is not a path.
    """
    path, _, query = raw.partition("?")
    if "#" in path:
        path = path.partition("#")[0]
    if path.startswith(("http://", "https://")):
        # absolute-form: keep only the path
        rest = path.split("://", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    if not path.startswith("/"):
        raise BadRequest("the request target must be an absolute path")
    if "\x00" in path:
        raise BadRequest("NUL byte in path")
    if "/." not in path and "//" not in path and _PLAIN.fullmatch(path):
        return path, path, query
    if not path.isascii():
        # raw bytes the HTTP parser could not decode arrive as surrogates
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("path is not valid UTF-8") from None
    out: list[str] = []
    segments = path.split("/")[1:]
    last = len(segments) - 1
    trailing = False
    for index, segment in enumerate(segments):
        if "%" in segment:
            segment = _decode_segment(segment)
        trailing = index == last and segment in ("", ".", "..")
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if not out:
                raise BadRequest("path climbs above the root")
            out.pop()
            continue
        out.append(segment)
    decoded = "/" + "/".join(out)
    if trailing and out:
        decoded += "/"
    return decoded, quote(decoded, safe=PATH_SAFE), query


def _decode_segment(segment: str) -> str:
    if _PCT.search(segment):
        raise BadRequest("invalid percent-encoding in path")
    try:
        decoded = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("percent-encoded path is not valid UTF-8") from None
    if "/" in decoded:
        raise BadRequest("encoded '/' (%2F) inside a path segment")
    if "\x00" in decoded:
        raise BadRequest("NUL byte in path")
    return decoded


def check_framing(headers: CIMultiDictProxy[str]) -> None:
    """Refuse request smuggling shapes the parser may have let through.

    :raise BadFraming: both Content-Length and Transfer-Encoding, several
        Content-Length values, a Transfer-Encoding other than ``chunked``, or a
        header value that still holds a line break (obs-fold).
    """
    for value in headers.values():
        if "\r" in value or "\n" in value:
            raise BadFraming("line break in a header value (obs-fold)")
    lengths = headers.getall("Content-Length", ())
    if lengths:
        if "Transfer-Encoding" in headers:
            raise BadFraming("both Content-Length and Transfer-Encoding")
        if len(lengths) > 1:
            raise BadFraming("duplicate Content-Length")
        if not (lengths[0].isascii() and lengths[0].isdigit()):
            raise BadFraming("invalid Content-Length")
    codings = headers.getall("Transfer-Encoding", ())
    if codings and (len(codings) > 1 or codings[0].strip().lower() != "chunked"):
        raise BadFraming("unsupported Transfer-Encoding")


# Headers a request may carry once (PRODUCT.md section 4, item 7): with two, the
# gateway and the upstream could each believe a different one.
SINGLETONS = (istr("Authorization"), istr("Host"), istr("Content-Length"))


def check_headers(headers: CIMultiDictProxy[str], *, reject_underscores: bool) -> None:
    """Refuse ambiguous headers: PRODUCT.md section 4, item 7.

    :raise BadRequest: more than one ``Authorization``, ``Host`` or
        ``Content-Length``; with ``reject_underscores``, a header name holding ``_``.
    """
    for name in SINGLETONS:
        if name in headers and len(headers.getall(name)) > 1:
            raise BadRequest(f"more than one {name} header")
    if reject_underscores:
        for key in headers:
            if "_" in key:
                raise BadRequest(f"header name with an underscore: {key[:64]!r}")


def drop_underscored(headers: CIMultiDict[str]) -> None:
    """Remove, in place, every header whose name holds ``_`` (``X_User_Id``).

    Servers behind CGI/WSGI conventions read ``X_User_Id`` as ``X-User-Id``, so
    such a header could pose as one the gateway sets or strips.
    """
    names = [name for name in headers if "_" in name]
    for name in names:
        headers.popall(name, None)


_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    """A process of its own, a prefix of its own: the workers of ``--workers N`` are forked
    from the supervisor after this module was imported, and would otherwise all number
    their requests from the same prefix and counter."""
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = uuid.uuid4().hex[:16]
    _ID_COUNTER = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A new request ID: a random per-process prefix and a counter (unique, no syscall)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id(value: str | None) -> str:
    """The client's X-Request-ID when it is 1-128 printable ASCII without spaces, else new."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedRule:
    """The trusted-proxy rule for X-Forwarded-For and the client IP (compiled once)."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)
        self._cache: dict[str, bool] = {}

    def is_trusted(self, address: str) -> bool:
        if not self.trusted:
            return False
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            result = False
        else:
            result = any(ip in net for net in self.trusted)
        if len(self._cache) < 4096:
            self._cache[address] = result
        return result

    def resolve(self, peer: str, forwarded_for: str | None) -> tuple[str, str, bool]:
        """``(client_ip, outgoing X-Forwarded-For, peer trusted)`` for a peer and its XFF.

        Earlier XFF values are kept only when the peer is trusted; the client IP
        is then the right-most address that is not itself a trusted proxy.
        """
        if not self.trusted:
            return peer, peer, False
        if not self.is_trusted(peer):
            return peer, peer, False
        if not forwarded_for:
            return peer, peer, True
        chain = [part.strip() for part in forwarded_for.split(",") if part.strip()]
        client = peer
        for hop in reversed(chain):
            client = hop
            if not self.is_trusted(hop):
                break
        return client, f"{', '.join(chain)}, {peer}" if chain else peer, True


def strip_hop_by_hop(headers: CIMultiDict[str], *, keep_upgrade: bool = False) -> None:
    """Remove hop-by-hop headers in place, including those named by Connection."""
    connection = headers.getall("Connection", ())
    for value in connection:
        for token in value.split(","):
            name = token.strip()
            if name and not (keep_upgrade and name.lower() == "upgrade"):
                headers.popall(name, None)
    for name in HOP_BY_HOP:
        if keep_upgrade and name == "Upgrade":
            continue
        if name in headers:
            headers.popall(name)
    proxy = [name for name in headers if name[:6].lower() == "proxy-"]
    for name in proxy:
        headers.popall(name, None)


def forwarded_headers(headers: CIMultiDict[str], client: Mapping[str, str], secure: bool,
                      forwarded_for: str, trusted: bool) -> None:
    """Set ``X-Forwarded-For``/``-Proto``/``-Host`` on an outgoing request's ``headers``.

    The one place of the trust rule for all three (proxied requests, aggregate
    and GraphQL calls): ``forwarded_for`` comes from :meth:`ForwardedRule.resolve`;
    the client's ``X-Forwarded-Proto`` and ``-Host`` are kept only when the peer
    is ``trusted``, else they are the connection's scheme and the ``Host`` header.
    """
    headers["X-Forwarded-For"] = forwarded_for
    proto = client.get("X-Forwarded-Proto") if trusted else None
    headers["X-Forwarded-Proto"] = proto or ("https" if secure else "http")
    host = (client.get("X-Forwarded-Host") if trusted else None) or client.get("Host")
    if host:
        headers["X-Forwarded-Host"] = host
    else:
        headers.popall("X-Forwarded-Host", None)


def host_of(headers: Mapping[str, Any]) -> str:
    """The Host header without port, lower-cased (for host matching)."""
    host = headers.get("Host", "")
    if not host:
        return ""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()


