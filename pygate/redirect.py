"""``gateway.redirect_http``: a plain listener answering 308 to the https URL.

The TLS listener's companion (PRODUCT.md section 10): every request on it gets
``308 Permanent Redirect`` to ``https://HOST[:PORT]/path?query``, the host taken from
the one ``Host`` header (validated), the path and query kept as sent. It runs on
pygate's own HTTP/1.1 protocol (:mod:`pygate.protocol`), so the parser's refusals and
the head deadline apply to it too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .config import Config, split_listen
from .errors import problem_response
from .listener import AcceptSite, bind
from .protocol import make_server
from .sanitize import request_id

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT = re.compile(r"(?::[0-9]{0,5})?")


def redirect_host(values: Sequence[str]) -> str | None:
    """The host of the ``Host`` header(s) for the https URL, lower-cased; None unless
    there is exactly one holding a valid host name or IP address (and optional port)."""
    if len(values) != 1:
        return None
    value = values[0]
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        literal, port = value[1:end], value[end + 1:]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        host = f"[{literal}]"
    else:
        host, sep, rest = value.partition(":")
        port = sep + rest
        if len(host) > 253 or not _HOSTNAME.fullmatch(host):
            return None
    if not _PORT.fullmatch(port):
        return None
    return host.lower()


def redirect_target(raw: str) -> str | None:
    """The path and query of a request target, as sent (non-ASCII percent-encoded);
    None for a target that is neither a path nor an absolute URL (``*``, authority)."""
    if raw.startswith(("http://", "https://")):  # absolute-form: drop scheme and authority
        rest = raw.split("://", 1)[1]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        raw = rest[cut:]
        raw = raw if raw.startswith("/") else "/" + raw
    elif not raw.startswith("/"):
        return None
    if not raw.isascii():
        # bytes the parser could not decode arrive as surrogates: back to the same bytes
        data = raw.encode("utf-8", "surrogateescape")
        raw = "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in data)
    return raw


class Redirect:
    """The handler of the ``redirect_http`` listener: every request gets 308 to
    ``https://HOST[:PORT]/path?query``, PORT being the TLS listener's unless it is 443."""

    __slots__ = ("suffix",)

    def __init__(self, tls_port: int) -> None:
        self.suffix = "" if tls_port == 443 else f":{tls_port}"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = redirect_host(request.headers.getall("Host", ()))
        target = redirect_target(request.raw_path)
        if host is None or target is None:
            detail = ("a redirect to https needs one Host header with a valid host"
                      if host is None else "the request target must be an absolute path")
            return problem_response(400, detail, request_id=request_id(None))
        return web.Response(status=308, headers={
            "Location": f"https://{host}{self.suffix}{target}", "Server": "pygate"})


REDIRECT_GRACE = 0.1
"""At the drain, how long the redirect listener's requests may still run (they take none)."""


async def open_redirect(config: Config, tls_port: int,
                        socks: Sequence[Any] | None = None) -> web.ServerRunner | None:
    """Serve ``gateway.redirect_http`` (on ``socks`` when given, else bound now).

    :return: its runner (``cleanup()`` stops it), or None when it is not configured.
    """
    address = config.gateway.redirect_http
    if address is None:
        return None
    if socks is None:
        socks = bind(*split_listen(address), reuse_port=False)
    limits = config.gateway
    server = make_server(Redirect(tls_port).handle, header_timeout=limits.header_timeout,
                         keepalive_timeout=limits.keepalive_timeout)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=REDIRECT_GRACE)
    await runner.setup()
    try:
        for sock in socks:
            await AcceptSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner



__all__ = ["Redirect", "open_redirect", "redirect_host", "redirect_target"]
