"""An HTTP/2 request head as aiohttp's :class:`RawRequestMessage`, checked as HTTP/1.1's is.

The h2 library has already refused (as a connection error) what RFC 9113 calls
malformed: connection-specific fields (``connection``, ``keep-alive``,
``proxy-connection``, ``transfer-encoding``, ``upgrade``), ``te`` other than
``trailers``, upper-case or otherwise illegal field names, NUL/CR/LF in values,
missing, duplicated, unknown or misplaced pseudo-header fields, and
``:authority`` and ``host`` that disagree. What is left to check here is what
HTTP/1.1's parser would have refused and HTTP/2 lets through, so that a request
never reaches the pipeline (or an upstream, where the request is written as
HTTP/1.1) in a shape it could not have had over HTTP/1.1:

- the method must be one HTTP/1.1's parser knows (upper case: ``get`` is no
  ``GET``, and an upstream that thought otherwise would meet a method no route
  expected), the target origin-form (``/...``, or ``*`` for OPTIONS) of visible
  ASCII only, no longer than a request line may be;
- ``:scheme`` must be ``http`` or ``https`` (X-Forwarded-Proto is the
  connection's, never the client's claim), ``:authority`` a host and port without
  userinfo;
- field names must be tokens, values free of control characters but tab, each
  field no larger than HTTP/1.1's limit and no more of them than HTTP/1.1 takes
  (431 otherwise, as HTTP/1.1 answers).
"""

from __future__ import annotations

import re

from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..protocol import MAX_FIELD, MAX_LINE

HTTP2 = HttpVersion(2, 0)

MAX_HEADERS = 128
"""The most header fields a request may carry: aiohttp's limit for HTTP/1.1."""

METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())
"""The methods HTTP/1.1's parser (llhttp) takes; any other gets 400 there, and here."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII: no space, control or 8-bit byte
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]+")  # host[:port], no "@"
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Refused(Exception):
    """A request head the gateway answers itself: ``status`` (400, 431) and why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def request_message(headers: list[tuple[bytes, bytes]], *, ended: bool = False
                    ) -> RawRequestMessage:
    """The message aiohttp's HTTP/1.1 parser would have built for this request.

    ``:authority`` (or ``host``) becomes the ``Host`` header, the first one.

    :param headers: the header block as h2 decoded and validated it (bytes).
    :param ended: the HEADERS frame ended the stream: no body follows (h2 checks a
        ``content-length`` against DATA frames only).
    :raise Refused: for a head HTTP/1.1 would not have let through.
    """
    method = path = scheme = authority = b""
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":scheme":
                scheme = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":  # extended CONNECT (RFC 8441): never advertised
                raise Refused(400, "extended CONNECT is not supported")
            continue
        if len(name) + len(value) > MAX_FIELD:
            raise Refused(431, "request header field too large")
        if not _TOKEN.fullmatch(name):
            raise Refused(400, "invalid header name")
        if _CONTROL.search(value):
            raise Refused(400, "control character in a header value")
        if name == b"host":
            authority = authority or value  # h2 checked that both agree
            continue
        if ended and name == b"content-length" and value != b"0":
            raise Refused(400, "content-length disagrees with the data sent")
        fields.append((name, value))
    if len(fields) >= MAX_HEADERS:  # the Host header makes one more
        raise Refused(431, "too many request header fields")
    if method not in METHODS:
        raise Refused(400, "unknown method")
    if not authority or not _AUTHORITY.fullmatch(authority):
        raise Refused(400, "invalid :authority")
    target = authority if method == b"CONNECT" else path
    if len(target) > MAX_LINE:
        raise Refused(400, "request target too long")
    if method != b"CONNECT":
        if scheme not in (b"http", b"https"):
            raise Refused(400, "invalid :scheme")
        if not _TARGET.fullmatch(path) or not (
                path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
            raise Refused(400, "invalid :path")
    text = target.decode("ascii")
    try:
        url = _url(text, connect=method == b"CONNECT")
    except ValueError:
        raise Refused(400, "invalid :path") from None
    host = authority.decode("ascii")
    pairs = [("Host", host)]
    pairs.extend((name.decode("ascii"), value.decode("utf-8", "surrogateescape"))
                 for name, value in fields)
    raw = ((b"Host", authority), *fields)
    return RawRequestMessage(method.decode("ascii"), text, HTTP2,
                             CIMultiDictProxy(CIMultiDict(pairs)), raw, False, None, False,
                             False, url)


def _url(target: str, *, connect: bool) -> URL:
    """The URL as aiohttp's parser builds it from a request target."""
    if connect:  # authority-form
        return URL.build(authority=target, encoded=True)
    if target == "*":
        return URL(target, encoded=True)
    path, _, fragment = target.partition("#")
    path, _, query = path.partition("?")
    return URL.build(path=path, query_string=query, fragment=fragment, encoded=True)


__all__ = ["HTTP2", "MAX_HEADERS", "METHODS", "Refused", "request_message"]
