"""cors' pure decisions: origin matching, preflight answers, response headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from pygate_cors.config import CorsConfig
from pygate_cors.policy import (
    Origins,
    add_vary,
    check_origin,
    decorate,
    is_preflight,
    normalize_origin,
    preflight,
)


def test_normalize_origin() -> None:
    assert normalize_origin("HTTPS://App.Example.com") == "https://app.example.com"
    assert normalize_origin("https://app.example.com:443") == "https://app.example.com"
    assert normalize_origin("http://app.example.com:443") == "http://app.example.com:443"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("app.example.com", "https://a.com/", "https://a.com/x", "https://", "https://a b",
                "https://user@a.com", "https://a.com?x"):
        assert normalize_origin(bad) is None, bad


@pytest.mark.parametrize("entry", ["*", "null", "https://a.com", "http://localhost:3000",
                                   "https://*.example.com", "https://*.example.com:8443"])
def test_valid_origin_entries(entry: str) -> None:
    assert check_origin(entry) == entry


@pytest.mark.parametrize("entry", ["", "a.com", "https://a.com/", "*.example.com",
                                   "https://*.com", "https://a.*.com", "https://*example.com",
                                   "https://**.example.com", "https://*.[::1]"])
def test_invalid_origin_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        check_origin(entry)


def test_origin_matching() -> None:
    origins = Origins.compile(["https://app.example.com", "https://*.example.org",
                               "http://*.local.test:8080"])
    assert origins.allows("https://app.example.com")
    assert origins.allows("https://app.example.com:443")
    assert not origins.allows("https://app.example.com:444")
    assert not origins.allows("https://app.example.com.evil.com")
    assert origins.allows("https://x.example.org")
    assert origins.allows("https://x.y.example.org")
    assert not origins.allows("https://example.org")
    assert not origins.allows("https://evilexample.org")
    assert not origins.allows("https://.example.org")
    assert not origins.allows("https://x..example.org")
    assert origins.allows("http://a.local.test:8080")
    assert not origins.allows("http://a.local.test")
    assert not origins.allows("null")
    assert Origins.compile(["null"]).allows("null")
    assert Origins.compile(["*"]).allows("https://anything.test")


def test_is_preflight() -> None:
    assert is_preflight("OPTIONS", CIMultiDict({"origin": "https://a.com",
                                                "access-control-request-method": "GET"}))
    assert not is_preflight("OPTIONS", CIMultiDict({"Origin": "https://a.com"}))
    assert not is_preflight("GET", CIMultiDict({"Origin": "https://a.com",
                                                "Access-Control-Request-Method": "GET"}))


def test_preflight_methods_are_case_sensitive() -> None:
    policy = CorsConfig(methods=["get", "post"]).policy
    assert policy.methods == ("GET", "POST")
    assert preflight(policy, "https://a.com", "POST", None).headers is not None
    assert preflight(policy, "https://a.com", "post", None).refusal is not None


def test_configured_header_star_reflects() -> None:
    policy = CorsConfig(origins=["https://a.com"], headers=["*"], credentials=True).policy
    answer = preflight(policy, "https://a.com", "GET", "X-Custom")
    assert answer.headers is not None
    assert answer.headers["Access-Control-Allow-Headers"] == "X-Custom"


def test_add_vary() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Vary", "Accept-Encoding"), ("Vary", "Cookie")])
    add_vary(headers, "Origin")
    assert headers.getall("Vary") == ["Accept-Encoding, Cookie, Origin"]
    add_vary(headers, "origin")
    assert headers.getall("Vary") == ["Accept-Encoding, Cookie, Origin"]
    star: CIMultiDict[str] = CIMultiDict(Vary="*")
    add_vary(star, "Origin")
    assert star.getall("Vary") == ["*"]


def test_decorate_strips_upstream_cors_headers_for_disallowed_origins() -> None:
    policy = CorsConfig(origins=["https://a.com"]).policy
    headers: CIMultiDict[str] = CIMultiDict({"Access-Control-Allow-Origin": "*"})
    decorate(policy, "https://b.com", headers)
    assert dict(headers) == {"Vary": "Origin"}
