"""The seed corpus: the shortest exchanges that broke pygate once, sent before every run.

Each entry is a failure class the fuzzer (or the engineer it was written for)
found, shrunk to a few lines, so that every run checks each of them whatever
hypothesis draws next: a fix stays fixed. Add the reproduction of each new
class here (``benchmarks/fuzz_http.py`` prints it).
"""

from __future__ import annotations

from .exchanges import HIDDEN_REQUEST, WS_KEY
from .upstream import VALID_TOKEN
from .wire import LENGTH, RID, Exchange, Request

TOKEN = VALID_TOKEN.encode()
WS = (b"Upgrade: websocket", b"Connection: Upgrade")


def get(target: bytes, *lines: bytes, method: bytes = b"GET", body: bytes = b"",
        coding: str = "", tag: str) -> Request:
    return Request(method, target, b"HTTP/1.1", (b"Host: gw", b"X-Request-ID: " + RID, *lines),
                   body, payload=None, coding=coding, tags=frozenset({"corpus", tag}))


CORPUS: tuple[Exchange, ...] = (
    # A non-ASCII byte in a Bearer token: 500 from the jwt plugin (now 401).
    Exchange((get(b"/private", b"Authorization: Bearer " + TOKEN[:10] + b"\xc3\xa9" + TOKEN[10:],
                  tag="bearer-non-ascii"),)),
    Exchange((get(b"/private", b"Authorization: Bearer \xff" + TOKEN, tag="bearer-non-ascii"),)),
    # A Sec-WebSocket-Key that is not base64, or not ASCII: 500 (now 400).
    Exchange((get(b"/ws", *WS, b"Sec-WebSocket-Key: not base64!!", b"Sec-WebSocket-Version: 13",
                  tag="ws-key-garbage"),)),
    Exchange((get(b"/ws", *WS, b"Sec-WebSocket-Key: \x9e\x9e\x8e}", b"Sec-WebSocket-Version: 13",
                  tag="ws-key-garbage"),)),
    # A Sec-WebSocket-Version that is not ASCII: 500 from aiohttp's own 400 text.
    Exchange((get(b"/ws", *WS, b"Sec-WebSocket-Key: " + WS_KEY, b"Sec-WebSocket-Version: \xff",
                  tag="ws-version-odd"),)),
    # A body cut short, then a half-close or an abort: an unhandled error (now 499).
    Exchange((get(b"/api", b"Content-Length: 50", method=b"POST", body=b"abc",
                  tag="body-cut-short"),), ending="half-close"),
    Exchange((get(b"/api", b"Content-Length: 50", method=b"POST", body=b"abc",
                  tag="body-cut-short"),), ending="abort"),
    # Two Authorization, Host or Content-Length headers: forwarded (now 400).
    Exchange((get(b"/private", b"Authorization: Bearer " + TOKEN, b"Authorization: Bearer x",
                  tag="authorization-duplicate"),)),
    Exchange((get(b"/api", b"Host: other", tag="host-duplicate"),)),
    Exchange((get(b"/api", b"Content-Length: 5", b"Content-Length: 5", method=b"POST",
                  body=b"hello", tag="content-length-duplicate"),)),
    # A header name with "_": forwarded, where CGI-style servers read it as X-User-Id.
    Exchange((get(b"/api", b"X_User_Id: admin", tag="underscore-header"),)),
    # A compressed body: decoded by the gateway and forwarded with the compressed
    # Content-Length, so the upstream read the rest as a request of its own.
    Exchange((get(b"/api", b"Content-Encoding: gzip", b"Content-Length: " + LENGTH,
                  method=b"POST", body=HIDDEN_REQUEST, coding="gzip",
                  tag="compressed-body"),)),
    Exchange((get(b"/api", b"Content-Encoding: deflate", b"Content-Length: " + LENGTH,
                  method=b"POST", body=b"hello " * 40, coding="deflate",
                  tag="compressed-body"),)),
    # CONNECT with a body: the upstream took it as a tunnel and read the body as requests.
    Exchange((get(b"/api", b"Content-Length: " + LENGTH, method=b"CONNECT", body=HIDDEN_REQUEST,
                  tag="connect-method"),)),
    # A pipelined request whose body never comes, and a client that closes once the
    # first answer is in: "upstream failed: RuntimeError", a 502 counted against the
    # upstream's breaker (which a client can so open). A race (3 times in 4 here, sent
    # alone), so several times.
    *(Exchange((get(b"/nothing", tag="pipelined-close"),
                get(b"/private", b"Authorization: Bearer " + TOKEN, b"Content-Length: 1",
                    method=b"PUT", tag="pipelined-close")),
               ending="close-after-first"),) * 8,
)
