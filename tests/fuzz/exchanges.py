"""What the fuzzer sends: hypothesis strategies for one connection's worth of requests.

Each request picks up to three aspects to damage (none for about a quarter of
them) and gets every other aspect right, so that most requests get past the
parser into routing, the plugins and the upstream, while each kind of damage
still comes up often, alone and in pairs. Every exchange carries tags naming
what was done to it (``bearer-non-ascii``, ``body-cut-short``, ...), which
``benchmarks/fuzz_http.py --exclude`` filters on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from hypothesis import strategies as st

from .upstream import VALID_TOKEN
from .wire import HIDDEN, LENGTH, RID, Exchange, Request

ASPECTS = ("method", "target", "version", "host", "auth", "websocket", "headers", "framing",
           "line-ending", "order")


def percent(draw: st.DrawFn) -> int:
    """0-99, for drawing at given odds (``percent(draw) < 5``: 5 %)."""
    return draw(st.integers(0, 99))


METHODS = [b"GET"] * 6 + [b"POST"] * 3 + [b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"]
ODD_METHODS = [b"TRACE", b"CONNECT", b"CONNECT", b"get", b"GeT", b"PRI", b"BREW", b"G\xc3\xa9T",
               b"GET\x00", b"", b"X" * 300, b"GET /", b"M-SEARCH"]
ODD_VERSIONS = [b"HTTP/1.0", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3",
                b"http/1.1", b"HTTP/1.1 extra", b"HTTP/11", b"HTTP/1.", b"", b"HTTP/1.1\x00",
                b"HTTP/\xff.1"]
ROUTES = [b"/api"] * 4 + [b"/items"] * 2 + [b"/private"] * 3 + [b"/ws"] * 2 + [b"/nothing", b""]
PLAIN_SEGMENTS = [b"users", b"7", b"a", b"orders", b"x.json", b"health", b"a-b_c", b"%41"]
SEGMENTS = [b"a b", b"..", b".", b"", b"%2e%2e", b"%2E", b"%2F", b"%2f", b"%00", b"%zz", b"%4",
            b"%", b"%C3%A9", b"%FF", b"%c0%af", b"a%20b", b"%25", b";x=1", b"*", b"~user",
            b"\x00", b"\xff", b"\xc3\xa9", b"\xe2\x80", b"\t", b"\\", b"a\\..\\b", b"%u002e",
            b"%2e", b"..%2f", b"#frag", b"?q=1", b"\xed\xa0\x80", b"%ED%A0%80"]
HOST_VALUES = [b"gw:8080", b"", b"127.0.0.1", b"[::1]:80", b"gw:99999", b"g\xc3\xa9", b"gw\x00",
               b"gw, other", b"a" * 300, b"*.example", b"gw:", b"gw gw"]


@st.composite
def targets(draw: st.DrawFn, broken: bool) -> tuple[bytes, set[str]]:
    """A route's path with more segments; ``broken``: tricky segments, forms and lengths."""
    tags: set[str] = set()
    path = draw(st.sampled_from(ROUTES))
    for _ in range(draw(st.integers(0, 3))):
        odds = percent(draw) if broken else 0
        if odds < 40:
            segment = draw(st.sampled_from(PLAIN_SEGMENTS))
        elif odds < 90:
            segment = draw(st.sampled_from(SEGMENTS))
            tags.add("tricky-segment")
        else:
            segment = draw(st.binary(min_size=1, max_size=6))
            tags.add("raw-bytes-target")
        path += b"/" + segment
    path = path or b"/"
    if percent(draw) < 15:
        path += b"?" + draw(st.sampled_from([b"a=%zz", b"\xff", b"a b", b"", b"?", b"#x"]
                                            if broken else [b"a=1", b"a=1&a=2", b"token=x"]))
    if broken:
        odds = percent(draw)
        if odds < 20:
            tags.add("absolute-form")
            path = draw(st.sampled_from([b"http://gw", b"https://gw:443", b"http://127.0.0.1:1",
                                         b"ftp://gw", b"http://", b"HTTP://GW"])) + path
        elif odds < 30:
            tags.add("odd-form")
            path = draw(st.sampled_from([b"*", b"gw:443", b"", b"api", b"//api", b" /api"]))
        elif odds < 42:
            tags.add("long-target")
            path += b"a" * draw(st.sampled_from([4000, 8170, 8200, 20000, 70000]))
    return path, tags


BENIGN_VALUES = [b"x", b"1.2.3.4", b"gzip", b"bytes=0-1", b"a=b", b"close", b'"q"', b"",
                 b"text/plain", b"keep-alive", b"x" * 200]
ODD_VALUES = [b" ", b"\xff", b"\xc3\xa9", b"a\x00b", b"a\rb", b"\x7f", b"x" * 9000, b"1, 2",
              b"\x86", b"a\x0bb"]
EXTRA_NAMES = [b"X_User_Id", b"X-User-Id", b"X_Forwarded_For", b"X-Forwarded-For",
               b"X-Forwarded-Host", b"Forwarded", b"Connection", b"Keep-Alive", b"TE",
               b"Trailer", b"Proxy-Authorization", b"Proxy-Foo", b"X-Request-ID", b"Cookie",
               b"Content-Type", b"Content-Encoding", b"Accept-Encoding", b"Range",
               b"If-None-Match", b"Via", b"X-Http-Method-Override", b"Origin", b"Max-Forwards",
               b"Accept", b"User-Agent", b"Upgrade"]


@st.composite
def extra_lines(draw: st.DrawFn, broken: bool) -> tuple[list[bytes], set[str]]:
    """Header lines beside those for routing, auth and framing; ``broken``: damaged ones."""
    lines: list[bytes] = []
    tags: set[str] = set()
    for _ in range(draw(st.integers(1, 3) if broken else st.sampled_from([0, 0, 1, 2]))):
        odds = percent(draw) if broken else 0
        if odds < 30:
            name = draw(st.sampled_from(EXTRA_NAMES))
            if b"_" in name:
                tags.add("underscore-header")
            if name == b"Content-Encoding":
                tags.add("content-encoding")
            if broken:
                tags.add("odd-header-value")
                value = draw(st.one_of(st.sampled_from(ODD_VALUES), st.binary(max_size=12)))
            else:
                value = draw(st.sampled_from(BENIGN_VALUES))
            lines.append(name + b": " + value)
        elif odds < 40:
            tags.add("obs-fold")
            lines += [b"X-Folded: a", draw(st.sampled_from([b" b", b"\tb", b" ", b"  : c"]))]
        elif odds < 50:
            tags.add("space-before-colon")
            lines.append(draw(st.sampled_from([b"X-A", b"Host", b"Authorization",
                                               b"Content-Length"])) + b" : 1")
        elif odds < 57:
            tags.add("raw-header-line")
            raw = draw(st.binary(min_size=1, max_size=16))
            lines.append(raw.replace(b"\r", b"").replace(b"\n", b""))
        elif odds < 70:
            tags.add("odd-header-name")
            lines.append(draw(st.sampled_from([b": novalue", b"X A: b", b"X\xffA: b",
                                               b"X-A\x00: b", b"noColon", b"X-A:b",
                                               b"\tX-A: b", b"X-A:: b", b"X-\xc3\xa9: b"])))
        elif odds < 78:
            tags.add("many-headers")
            count = draw(st.sampled_from([50, 200, 1000]))
            lines += [b"X-Many-%d: v" % i for i in range(count)]
        else:
            tags.add("expect")
            lines.append(b"Expect: " + draw(st.sampled_from(
                [b"100-continue", b"100-continue", b"100-Continue", b"101-switch", b"",
                 b"\xff", b"100-continue, x"])))
    return lines, tags


def _bearer(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """A broken ``Authorization`` value (non-ASCII, garbage, odd schemes, too long...)."""
    token = VALID_TOKEN.encode()
    odds = percent(draw)
    if odds < 30:
        at = draw(st.integers(0, len(token)))
        byte = draw(st.sampled_from([b"\xff", b"\xc3\xa9", b"\x80", b"\xe2\x82\xac", b"\x00"]))
        return b"Bearer " + token[:at] + byte + token[at:], {"bearer-non-ascii"}
    if odds < 45:
        return b"Bearer " + draw(st.binary(min_size=1, max_size=24)), {"bearer-bytes"}
    if odds < 55:
        parts = draw(st.lists(st.binary(max_size=8), min_size=3, max_size=3))
        raw = b".".join(base64.urlsafe_b64encode(p).rstrip(b"=") for p in parts)
        return b"Bearer " + raw, {"bearer-garbage-jwt"}
    if odds < 60:
        header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=")
        return b"Bearer " + header + b"." + token.split(b".")[1] + b".", {"bearer-alg-none"}
    if odds < 80:
        return draw(st.sampled_from([b"Bearer", b"Bearer ", b"bearer  x", b"Basic Zm9vOmJhcg==",
                                     b"Bearer " + token + b" extra", b"", b"\xff",
                                     b"Bearer " + token[:-3], b"BEARER " + token])), {"bearer-odd"}
    if odds < 85:
        return b"Bearer " + b"A" * draw(st.sampled_from([2000, 9000])), {"bearer-long"}
    return b"Bearer " + draw(st.text(min_size=1, max_size=8)).encode(), {"bearer-non-ascii"}


@st.composite
def auth_lines(draw: st.DrawFn, broken: bool) -> tuple[list[bytes], set[str]]:
    """``Authorization`` lines: a valid HS256 token, or broken/duplicated/missing ones."""
    valid = b"Authorization: Bearer " + VALID_TOKEN.encode()
    if not broken:
        return [valid], {"bearer-valid"}
    odds = percent(draw)
    if odds < 70:
        value, tags = _bearer(draw)
        return [b"Authorization: " + value], tags
    if odds < 90:
        other, tags = (b"Bearer " + VALID_TOKEN.encode(), set()) if draw(st.booleans()) \
            else _bearer(draw)
        return [valid, b"Authorization: " + other], {"authorization-duplicate", *tags}
    return [], {"authorization-missing"}


WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ODD_WS_KEYS = [b"not base64!!", b"dGhl", b"", b"\xff\xfe", b"AAAAAAAAAAAAAAAAAAAAAA==", b"=====",
               b"dGhlIHNhbXBsZSBub25jZQ", b"dGhlIHNhbXBsZSBub25jZQ==\xff",
               b"dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ=="]


@st.composite
def websocket_lines(draw: st.DrawFn, broken: bool) -> tuple[list[bytes], set[str]]:
    """A WebSocket handshake's headers; ``broken``: one or more of them wrong."""
    tags = {"websocket"}
    bad = set(draw(st.lists(st.sampled_from(["upgrade", "connection", "key", "version",
                                             "protocol", "extensions"]),
                            min_size=1, max_size=2))) if broken else set()
    lines = [b"Upgrade: " + (draw(st.sampled_from([b"WebSocket", b"h2c", b"websocket, x",
                                                   b"\xff", b""]))
                             if "upgrade" in bad else b"websocket"),
             b"Connection: " + (draw(st.sampled_from([b"keep-alive, Upgrade", b"close",
                                                      b"upgrade, close", b"x"]))
                                if "connection" in bad else b"Upgrade")]
    if "key" in bad:
        odds = percent(draw)
        if odds < 60:
            tags.add("ws-key-garbage")
            lines.append(b"Sec-WebSocket-Key: " + draw(st.sampled_from(ODD_WS_KEYS)))
        elif odds < 80:
            tags.add("ws-key-garbage")
            lines.append(b"Sec-WebSocket-Key: " + draw(st.binary(max_size=24)))
        elif odds < 90:
            tags.add("ws-key-duplicate")
            lines += [b"Sec-WebSocket-Key: " + WS_KEY, b"Sec-WebSocket-Key: " + WS_KEY]
        else:
            tags.add("ws-key-missing")
    else:
        lines.append(b"Sec-WebSocket-Key: " + WS_KEY)
    if "version" in bad:
        tags.add("ws-version-odd")
        version = draw(st.sampled_from([b"8", b"", b"13, 8", b"\xff", b"14", b"13\x00", None]))
        if version is not None:
            lines.append(b"Sec-WebSocket-Version: " + version)
    else:
        lines.append(b"Sec-WebSocket-Version: 13")
    if "protocol" in bad or percent(draw) < 20:
        lines.append(b"Sec-WebSocket-Protocol: " + draw(st.sampled_from(
            [b"a, b", b"", b"\xff", b"a b", b",,"] if "protocol" in bad else [b"v1.chat"])))
    if "extensions" in bad:
        lines.append(b"Sec-WebSocket-Extensions: " + draw(st.sampled_from(
            [b"permessage-deflate; client_max_window_bits=99", b"\xff", b"x; y=\"z"])))
    return lines, tags


ODD_CONTENT_LENGTHS = [b"+5", b"-1", b"5 ", b" 5", b"0x5", b"5, 5", b"99999999999999999999",
                       b"1e3", b"\xef\xbc\x95", b"", b"5\x00", b"05", b"5.0"]
ODD_CODINGS = [b"Chunked", b" chunked", b"chunked, chunked", b"gzip, chunked", b"identity",
               b"gzip", b"chunked\x00", b"chunked;q=1", b"\xff", b"", b"chunked, identity"]
BODIES = [b"hello", b"hello", b"", b"x" * 100, b"\x00\xff" * 10, b"a" * 70000]


HIDDEN_REQUEST = b"GET /api/hidden HTTP/1.1\r\nHost: gw\r\nX-Request-ID: " + HIDDEN + b"\r\n\r\n"
"""A request inside a body: if the upstream ever receives it, the gateway let it through."""


@dataclass
class Body:
    """A request's framing: header lines, the bytes written after the head, and the body the
    upstream should receive (None when the framing is broken and no answer is right)."""

    lines: list[bytes] = field(default_factory=list)
    body: bytes = b""
    payload: bytes | None = b""
    coding: str = ""
    tags: set[str] = field(default_factory=set)


@st.composite
def framing(draw: st.DrawFn, broken: bool, last: bool) -> Body:
    """How one request's body is framed.

    Well-formed: no body, Content-Length, chunked, a compressed body (gzip or
    deflate, which the gateway must pass on as sent), a body holding a request.
    ``broken``: lengths that lie or repeat, both framings, bad chunks, and (when
    ``last``, the connection's last request) a body cut short.
    """
    body = draw(st.sampled_from(BODIES))
    odds = percent(draw)
    if not broken:
        if odds < 45:
            return Body()
        if odds < 70:
            return Body([b"Content-Length: %d" % len(body)], body, body)
        if odds < 82:
            return Body([b"Transfer-Encoding: chunked"], body[:200], body[:200], "chunked",
                        {"chunked"})
        if odds < 91:
            coding = draw(st.sampled_from(["gzip", "deflate"]))
            inner = draw(st.sampled_from([HIDDEN_REQUEST, b"hello " * 40, b""]))
            return Body([b"Content-Encoding: " + coding.encode(), b"Content-Length: " + LENGTH],
                        inner, None, coding, {"compressed-body", "content-encoding"})
        if draw(st.booleans()):
            return Body([b"Content-Length: " + LENGTH], HIDDEN_REQUEST, HIDDEN_REQUEST,
                        tags={"body-carries-request"})
        return Body([b"Transfer-Encoding: chunked"], HIDDEN_REQUEST, HIDDEN_REQUEST, "chunked",
                    {"body-carries-request", "chunked"})
    if odds < 25 and last:  # declared longer than sent: the client never finishes
        sent = draw(st.integers(0, 10))
        declared = sent + draw(st.sampled_from([1, 50, 70000]))
        return Body([b"Content-Length: %d" % declared], b"y" * sent, None,
                    tags={"body-cut-short"})
    if odds < 35:
        value = draw(st.sampled_from(ODD_CONTENT_LENGTHS))
        return Body([b"Content-Length: " + value], b"hello", None, tags={"content-length-odd"})
    if odds < 45:
        second = b"Content-Length: %d" % (len(body) + draw(st.sampled_from([0, 1])))
        return Body([b"Content-Length: %d" % len(body), second], body, None,
                    tags={"content-length-duplicate"})
    if odds < 65:
        raw, tags = _bad_chunks(draw)
        return Body([b"Transfer-Encoding: chunked"], raw, None, tags=tags)
    if odds < 75:
        lines = [b"Transfer-Encoding: " + draw(st.sampled_from(ODD_CODINGS))]
        if draw(st.booleans()):
            lines.append(b"Transfer-Encoding: chunked")
        return Body(lines, b"5\r\nhello\r\n0\r\n\r\n", None, tags={"transfer-encoding-odd"})
    if odds < 88:  # a request hidden after a chunked body that Content-Length covers
        raw = b"0\r\n\r\n" + HIDDEN_REQUEST
        lines = [b"Content-Length: " + LENGTH, b"Transfer-Encoding: chunked"]
        if draw(st.booleans()):
            lines.reverse()
        return Body(lines, raw, None, tags={"content-length-and-chunked"})
    # more bytes than Content-Length: the rest is read as the start of another request
    return Body([b"Content-Length: 2"], b"hello", b"he", tags={"body-longer-than-length"})


def _bad_chunks(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    odds = percent(draw)
    if odds < 40:
        size = draw(st.sampled_from([b"zz", b"-1", b"ffffffffffffffffff", b"5 ;ext", b"5;e=\x00",
                                     b"0x5", b"+5", b"", b"5\n", b"\xff", b"5;" + b"e" * 9000]))
        return size + b"\r\nhello\r\n0\r\n\r\n", {"chunk-bad-size"}
    if odds < 55:
        return b"5\r\nhello\r\n0\r\nX-Trailer: v\r\nContent-Length: 9\r\n\r\n", {"chunk-trailer"}
    if odds < 70:
        return b"5\r\nhelloXX0\r\n\r\n", {"chunk-no-crlf"}
    if odds < 85:
        return b"5\nhello\n0\n\n", {"chunk-bare-lf"}
    return b"5\r\nhello\r\n", {"chunk-unterminated"}


@st.composite
def http_requests(draw: st.DrawFn, last: bool) -> Request:
    """One request; ``last`` (on its connection) may cut its body short or ask to close."""
    damage = set(draw(st.lists(st.sampled_from(ASPECTS),
                               max_size=draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3])))))
    tags = {f"broken-{aspect}" for aspect in damage}
    if "method" in damage:
        method = draw(st.one_of(st.sampled_from(ODD_METHODS),
                                st.binary(min_size=1, max_size=8)))
        if method.upper() == b"CONNECT":
            tags.add("connect-method")
    else:
        method = draw(st.sampled_from(METHODS))
    target, target_tags = draw(targets("target" in damage))
    tags |= target_tags
    version = draw(st.sampled_from(ODD_VERSIONS)) if "version" in damage else b"HTTP/1.1"
    lines: list[bytes] = []
    if "host" in damage:
        odds = percent(draw)
        if odds < 40:
            tags.add("host-duplicate")
            lines += [b"Host: gw", b"Host: " + draw(st.sampled_from([b"gw", *HOST_VALUES]))]
        elif odds < 85:
            lines.append(b"Host: " + draw(st.sampled_from(HOST_VALUES)))
        else:
            tags.add("host-missing")
    else:
        lines.append(b"Host: gw")
    lines.append(b"X-Request-ID: " + RID)
    if target.startswith(b"/private") or "auth" in damage or percent(draw) < 5:
        auth, auth_tags = draw(auth_lines("auth" in damage))
        lines += auth
        tags |= auth_tags
    if target.startswith(b"/ws") or "websocket" in damage:
        ws, ws_tags = draw(websocket_lines("websocket" in damage))
        lines += ws
        tags |= ws_tags
    extra, extra_tags = draw(extra_lines("headers" in damage))
    lines += extra
    tags |= extra_tags
    body = draw(framing("framing" in damage, last))
    lines += body.lines
    tags |= body.tags
    if (last and percent(draw) < 85
            and not any(line.lower().startswith(b"connection:") for line in lines)):
        lines.append(b"Connection: close")
    if "order" in damage:
        lines = list(draw(st.permutations(lines)))
    eol = b"\r\n"
    if "line-ending" in damage:
        eol = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))
    # Damage anywhere (a CR LF in a value, a broken line ending) can move where the
    # gateway sees the body, so only an undamaged request has a body to expect upstream.
    payload = body.payload if not damage else None
    return Request(method, target, version, tuple(lines), body.body, eol, payload, body.coding,
                   frozenset(tags))


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    """One connection: one to three pipelined requests, and how the connection ends."""
    count = draw(st.sampled_from([1] * 8 + [2, 2, 3]))
    reqs = tuple(draw(http_requests(last=i == count - 1)) for i in range(count))
    early = ["close-after-first"] if count > 1 else []
    if "body-cut-short" in reqs[-1].tags:
        ending = draw(st.sampled_from(["half-close", "abort", "read", *early]))
    else:
        odds = percent(draw)
        ending = ("read" if odds < 88 else "half-close" if odds < 93 else "abort"
                  if odds < 97 or not early else early[0])
    return Exchange(reqs, ending, split=percent(draw) < 15)


def plain_get(path: bytes = b"/api/health") -> Exchange:
    """The ordinary request that must keep working: a GET on the prefix route."""
    return Exchange((Request(b"GET", path, b"HTTP/1.1",
                             (b"Host: gw", b"X-Request-ID: " + RID, b"Connection: close")),))
