"""Path safety, smuggling checks, request IDs, X-Forwarded-For and hop-by-hop headers."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from pygate.errors import BadRequest
from pygate.router import compile_path
from pygate.sanitize import (
    ForwardedRule,
    check_framing,
    host_of,
    normalize_path,
    request_id,
    strip_hop_by_hop,
)

# ---------------------------------------------------------------------------
# normalize_path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "encoded", "query"),
    [
        ("/", "/", "/", ""),
        ("/api/users", "/api/users", "/api/users", ""),
        ("/api/users?x=1&y=%2F", "/api/users", "/api/users", "x=1&y=%2F"),
        ("/api/users/../admin", "/api/admin", "/api/admin", ""),
        ("/api/./users/./7", "/api/users/7", "/api/users/7", ""),
        ("/api/users/%2e%2e/admin", "/api/admin", "/api/admin", ""),
        ("/api/users/%2E%2E/admin", "/api/admin", "/api/admin", ""),
        ("/api/users/.%2e/admin", "/api/admin", "/api/admin", ""),
        ("/api/%2e/users", "/api/users", "/api/users", ""),
        ("/api//users///7", "/api/users/7", "/api/users/7", ""),
        ("//api", "/api", "/api", ""),
        ("/api/users/", "/api/users/", "/api/users/", ""),
        ("/api/users//", "/api/users/", "/api/users/", ""),
        ("/a/b/..", "/a/", "/a/", ""),
        ("/a/b/.", "/a/b/", "/a/b/", ""),
        ("/a/..", "/", "/", ""),
        ("/%41pi/%75sers", "/Api/users", "/Api/users", ""),
        ("/caf%C3%A9", "/café", "/caf%C3%A9", ""),
        ("/a%20b", "/a b", "/a%20b", ""),
        ("/a%25b", "/a%b", "/a%25b", ""),
        ("/a%3Fb%23c", "/a?b#c", "/a%3Fb%23c", ""),
        ("/.well-known/x", "/.well-known/x", "/.well-known/x", ""),
        ("/a#frag", "/a", "/a", ""),
        ("http://example.com/api/users?q=1", "/api/users", "/api/users", "q=1"),
        ("https://example.com", "/", "/", ""),
    ],
)
def test_normalize_path(raw: str, path: str, encoded: str, query: str) -> None:
    assert normalize_path(raw) == (path, encoded, query)


def test_unchanged_path_is_forwarded_as_received() -> None:
    raw = "/api/users/7"
    path, encoded, _ = normalize_path(raw)
    assert path == encoded == raw


def test_raw_non_ascii_is_forwarded_percent_encoded() -> None:
    assert normalize_path("/café/x") == ("/café/x", "/caf%C3%A9/x", "")
    assert normalize_path("/a b/[x]")[1] == "/a%20b/%5Bx%5D"


@pytest.mark.parametrize(
    "raw",
    [
        "/api/a%2Fb",
        "/api/a%2fb",
        "/api/%2F",
        "/api/a\x00b",
        "/api/a%00b",
        "/api/%zz",
        "/api/%4",
        "/api/abc%",
        "/api/%%41",
        "/api/%ff",
        "/api/%C3",
        "/api/%C0%AE",  # overlong encoding of "."
        "/api/x\udcc3y",  # raw bytes the parser could not decode
        "/..",
        "/../etc/passwd",
        "/api/../../etc",
        "/%2e%2e",
        "/api/%2e%2e/%2e%2e/x",
        "api/users",
        "*",
        "",
    ],
)
def test_normalize_path_refuses(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        normalize_path(raw)
    assert info.value.status == 400


# Pieces of request targets: enough to build encoded slashes, dot-segments in
# every spelling, broken escapes and ordinary names.
_PIECES = ["/", ".", "%2e", "%2E", "%2F", "a", "b", "api", "users", "%", "..", "%41", "%20"]
_pieces = st.lists(st.sampled_from(_PIECES), max_size=14).map("".join)
_segments = st.lists(
    st.lists(st.sampled_from([p for p in _PIECES if p != "/"]), max_size=3).map("".join),
    max_size=6,
).map("/".join)
# Often start on a route's prefix, so that matches (and escapes from it) are common.
_starts = st.sampled_from(["", "/api", "/api/users", "/a/b"])
raw_paths = st.builds(lambda start, rest: start + "/" + rest, _starts, _pieces | _segments)


def _normalized(raw: str) -> tuple[str, str, str] | None:
    try:
        return normalize_path(raw)
    except BadRequest:
        return None


@settings(max_examples=300, deadline=None)
@given(raw_paths)
@example("/api/users/%2e%2e/%2e%2e")
@example("/api/%2e%2e/api/users")
@example("/a/..%2F")
def test_normalization_is_idempotent(raw: str) -> None:
    first = _normalized(raw)
    if first is None:
        return
    path, encoded, _ = first
    again = normalize_path(encoded)
    assert again[0] == path
    assert again[1] == encoded


@settings(max_examples=300, deadline=None)
@given(raw_paths)
def test_normalized_path_never_climbs_or_keeps_dot_segments(raw: str) -> None:
    result = _normalized(raw)
    if result is None:
        return
    path, encoded, _ = result
    for value in (path, encoded):
        assert value.startswith("/")
        segments = value.split("/")
        assert "." not in segments
        assert ".." not in segments
        assert "" not in segments[1:-1]  # no duplicate slashes
    assert "%2e" not in encoded.lower().split("/")
    assert "\x00" not in path


@settings(max_examples=300, deadline=None)
@given(
    raw_paths,
    st.sampled_from(["/api", "/api/users", "/api/users/{id}", "/api/{name}/users",
                     "/api/{rest:path}", "/a/b"]),
)
def test_route_never_matches_outside_its_prefix(raw: str, route_path: str) -> None:
    result = _normalized(raw)
    if result is None:
        return
    path = result[0]
    compiled = compile_path(route_path)
    params = compiled.match(path)
    if params is None:
        return
    prefix = compiled.prefix
    assert path == prefix or path.startswith(prefix + "/")
    for name, value in params.items():
        assert value not in (".", "..")
        if name not in compiled.path_params:
            assert "/" not in value


# ---------------------------------------------------------------------------
# check_framing
# ---------------------------------------------------------------------------


def _headers(*items: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(items))


@pytest.mark.parametrize(
    "items",
    [
        (),
        (("Content-Length", "0"),),
        (("Content-Length", "12345"),),
        (("Transfer-Encoding", "chunked"),),
        (("transfer-encoding", "Chunked"),),
        (("Host", "example.com"), ("Content-Length", "5")),
    ],
)
def test_check_framing_accepts(items: tuple[tuple[str, str], ...]) -> None:
    check_framing(_headers(*items))


@pytest.mark.parametrize(
    "items",
    [
        (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
        (("Transfer-Encoding", "chunked"), ("content-length", "5")),
        (("Content-Length", "5"), ("Content-Length", "5")),
        (("Content-Length", "5"), ("Content-Length", "6")),
        (("Content-Length", "5, 5"),),
        (("Content-Length", "abc"),),
        (("Content-Length", "-1"),),
        (("Content-Length", "+5"),),
        (("Content-Length", ""),),
        (("Content-Length", "\u0661\u0662"),),  # digits, but not ASCII ones
        (("Transfer-Encoding", "gzip"),),
        (("Transfer-Encoding", "gzip, chunked"),),
        (("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")),
        (("Transfer-Encoding", "identity"),),
        (("Content-Length", "5"), ("X-Folded", "a\r\n b")),
    ],
)
def test_check_framing_refuses(items: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(BadRequest):
        check_framing(_headers(*items))


# ---------------------------------------------------------------------------
# request_id
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "abc-123", "x" * 128, "!~#$%&'()*+,-./:;<=>?@[]^_`{|}"])
def test_request_id_kept(value: str) -> None:
    assert request_id(value) == value


@pytest.mark.parametrize(
    "value", [None, "", "x" * 129, "has space", "tab\there", "caf\u00e9", "line\n", "\x7f",
              "nul\x00"],
)
def test_request_id_replaced(value: str | None) -> None:
    new = request_id(value)
    assert new != value
    assert 1 <= len(new) <= 128
    assert all(0x21 <= ord(c) <= 0x7E for c in new)
    assert request_id(value) != new  # a fresh one each time


# ---------------------------------------------------------------------------
# ForwardedRule
# ---------------------------------------------------------------------------


def _rule(*cidrs: str) -> ForwardedRule:
    return ForwardedRule([ipaddress.ip_network(c) for c in cidrs])


def test_no_trusted_proxies_replaces_the_chain() -> None:
    rule = _rule()
    assert rule.resolve("203.0.113.9", "1.2.3.4, 5.6.7.8") == ("203.0.113.9", "203.0.113.9", False)
    assert rule.resolve("203.0.113.9", None) == ("203.0.113.9", "203.0.113.9", False)


def test_untrusted_peer_replaces_the_chain() -> None:
    rule = _rule("10.0.0.0/8")
    client, xff, trusted = rule.resolve("203.0.113.9", "1.2.3.4")
    assert (client, xff, trusted) == ("203.0.113.9", "203.0.113.9", False)


def test_trusted_peer_keeps_the_chain_and_appends_itself() -> None:
    rule = _rule("10.0.0.0/8")
    client, xff, trusted = rule.resolve("10.0.0.1", "198.51.100.7")
    assert client == "198.51.100.7"
    assert xff == "198.51.100.7, 10.0.0.1"
    assert trusted is True


def test_client_is_right_most_untrusted_hop() -> None:
    rule = _rule("10.0.0.0/8", "192.168.0.0/16")
    client, xff, _ = rule.resolve("10.0.0.1", "6.6.6.6, 198.51.100.7 , 192.168.1.1,10.1.1.1")
    assert client == "198.51.100.7"  # 6.6.6.6 could be forged by the client
    assert xff == "6.6.6.6, 198.51.100.7, 192.168.1.1, 10.1.1.1, 10.0.0.1"


def test_trusted_peer_without_forwarded_for() -> None:
    rule = _rule("10.0.0.0/8")
    assert rule.resolve("10.0.0.1", None) == ("10.0.0.1", "10.0.0.1", True)
    assert rule.resolve("10.0.0.1", "") == ("10.0.0.1", "10.0.0.1", True)


def test_unparseable_hop_is_not_trusted() -> None:
    rule = _rule("10.0.0.0/8")
    client, _, _ = rule.resolve("10.0.0.1", "1.1.1.1, garbage")
    assert client == "garbage"


def test_ipv6_trusted_proxy() -> None:
    rule = _rule("::1/128")
    client, xff, trusted = rule.resolve("::1", "2001:db8::5")
    assert (client, xff, trusted) == ("2001:db8::5", "2001:db8::5, ::1", True)


# ---------------------------------------------------------------------------
# strip_hop_by_hop, host_of
# ---------------------------------------------------------------------------


def test_strip_hop_by_hop() -> None:
    headers: CIMultiDict[str] = CIMultiDict([
        ("Host", "example.com"),
        ("Connection", "keep-alive, X-Secret"),
        ("Connection", "x-other"),
        ("X-Secret", "1"),
        ("X-Other", "2"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Custom", "x"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Accept", "*/*"),
        ("X-Keep", "yes"),
    ])
    strip_hop_by_hop(headers)
    assert sorted(headers.items()) == [("Accept", "*/*"), ("Host", "example.com"),
                                       ("X-Keep", "yes")]


def test_strip_hop_by_hop_keeps_upgrade_for_websocket() -> None:
    headers: CIMultiDict[str] = CIMultiDict([
        ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k"),
    ])
    strip_hop_by_hop(headers, keep_upgrade=True)
    assert headers.get("Upgrade") == "websocket"
    assert "Connection" not in headers
    assert headers.get("Sec-WebSocket-Key") == "k"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Connection", True), ("keep-alive", True), ("Proxy-Authorization", True),
     ("proxy-anything", True), ("TE", True), ("Trailer", True), ("Transfer-Encoding", True),
     ("Upgrade", True), ("Content-Type", False), ("X-Proxy-Id", False), ("Trailers", False)],
)
def test_strip_hop_by_hop_by_name(name: str, expected: bool) -> None:
    headers: CIMultiDict[str] = CIMultiDict([(name, "v"), ("X-Kept", "k")])
    strip_hop_by_hop(headers)
    assert (name not in headers) is expected
    assert headers["X-Kept"] == "k"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, ""),
        ("", ""),
        ("example.com", "example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com:8080", "api.example.com"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
    ],
)
def test_host_of(host: str | None, expected: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    if host is not None:
        headers["Host"] = host
    assert host_of(headers) == expected
