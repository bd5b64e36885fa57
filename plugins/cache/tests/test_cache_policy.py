"""The pure rules: Cache-Control, freshness, Vary, keys and validators."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from pygate_cache.policy import (
    Entry,
    cache_key,
    directives,
    not_modified,
    request_rules,
    response_verdict,
    stored_headers,
    variant,
    vary_names,
)

NOW = 1_700_000_000.0


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def verdict(status: int = 200, *pairs: tuple[str, str], ttl: float = 30.0, honour: bool = True,
            authorized: bool = False):
    return response_verdict(status, h(*pairs), ttl=ttl, honour=honour, now=NOW,
                            authorized=authorized)


def test_directives_are_case_insensitive_quoted_and_first_wins():
    found = directives(['Public, MAX-AGE=60, private="Set-Cookie, X-Y"', "max-age=5, s-maxage=7"])
    assert found == {"public": None, "max-age": "60", "private": "Set-Cookie, X-Y",
                     "s-maxage": "7"}


@pytest.mark.parametrize(("pairs", "lookup", "store", "max_age"), [
    ((), True, True, None),
    ((("Cache-Control", "no-cache"),), False, True, None),
    ((("Cache-Control", "No-Store"),), False, False, None),
    ((("Cache-Control", "max-age=0"),), False, True, None),
    ((("Cache-Control", "max-age=10"),), True, True, 10),
    ((("Pragma", "no-cache"),), False, True, None),
    ((("Pragma", "no-cache"), ("Cache-Control", "max-age=5")), True, True, 5),
])
def test_request_rules(pairs, lookup, store, max_age):
    rules = request_rules(h(*pairs), honour=True)
    assert (rules.lookup, rules.store, rules.max_age) == (lookup, store, max_age)


def test_request_directives_are_ignored_without_cache_control():
    rules = request_rules(h(("Cache-Control", "no-store")), honour=False)
    assert rules.lookup and rules.store


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 404, 410])
def test_heuristically_cacheable_statuses_are_stored_for_ttl(status):
    result = verdict(status)
    assert result.store and result.lifetime == 30.0


@pytest.mark.parametrize("status", [201, 206, 302, 304, 307, 308, 400, 401, 403, 500, 502, 503])
def test_other_statuses_are_not_stored(status):
    assert verdict(status).reason == "status"


@pytest.mark.parametrize(("pairs", "reason"), [
    ((("Set-Cookie", "a=1"),), "set-cookie"),
    ((("Vary", "Accept, *"),), "vary"),
    ((("Cache-Control", "no-store"),), "no-store"),
    ((("Cache-Control", "private"),), "private"),
    ((("Cache-Control", 'private="X-User"'),), "private"),
    ((("Cache-Control", "no-cache"),), "no-cache"),
    ((("Cache-Control", "max-age=0"),), "stale"),
    ((("Cache-Control", "max-age=60"), ("Age", "60")), "stale"),
    ((("Cache-Control", "max-age=soon"),), "stale"),
    ((("Expires", "0"),), "stale"),
])
def test_responses_not_stored(pairs, reason):
    assert verdict(200, *pairs).reason == reason


def test_s_maxage_wins_over_max_age_and_both_override_ttl():
    assert verdict(200, ("Cache-Control", "max-age=600"), ttl=5).lifetime == 600
    assert verdict(200, ("Cache-Control", "max-age=600, s-maxage=2")).lifetime == 2
    assert verdict(200, ("Cache-Control", "s-maxage=0, max-age=600")).reason == "stale"


def test_expires_counts_from_date_and_age_is_kept():
    result = verdict(200, ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                     ("Expires", "Tue, 14 Nov 2023 22:15:00 GMT"), ("Age", "10"))
    assert (result.store, result.lifetime, result.age) == (True, 100.0, 10)


def test_without_cache_control_the_ttl_applies_but_no_store_and_private_still_hold():
    assert verdict(200, ("Cache-Control", "no-cache, max-age=600"), honour=False).lifetime == 30
    assert verdict(200, ("Cache-Control", "no-store"), honour=False).reason == "no-store"
    assert verdict(200, ("Cache-Control", "private"), honour=False).reason == "private"


def test_authorization_requires_explicit_permission():
    assert verdict(200, authorized=True).reason == "authorization"
    for allowed in ("public", "s-maxage=60", "must-revalidate"):
        assert verdict(200, ("Cache-Control", allowed), authorized=True).store


def test_vary_names_and_variants():
    assert vary_names(h(("Vary", "Accept-Language, accept"), ("Vary", "X-Tenant"))) == (
        "accept", "accept-language", "x-tenant")
    assert vary_names(h()) == ()
    names = ("accept-language",)
    fr = variant(names, h(("Accept-Language", "fr")))
    assert fr == variant(names, h(("accept-language", " fr ")))
    assert fr != variant(names, h(("Accept-Language", "de")))
    assert variant(names, h()) != variant(names, h(("Accept-Language", "")))


def test_keys_are_unambiguous_and_prefix_friendly():
    assert cache_key("users", "/users/7", "a=1") == "users:/users/7?a=1"
    assert cache_key("users", "/users/7", "", "alice") == "users:/users/7? c=alice"
    assert cache_key("a:b", "/x", "") == "a%3Ab:/x?"
    # a decoded "?" or "%" in the path cannot collide with the query separator
    assert cache_key("r", "/a?b", "c") != cache_key("r", "/a", "b?c")
    assert cache_key("r", "/100%", "") == "r:/100%25?"
    assert cache_key("r", "/x", "", "bob smith") == "r:/x? c=bob%20smith"


def test_stored_headers_drop_per_request_ones():
    kept = stored_headers(h(("Content-Type", "text/plain"), ("X-Request-ID", "abc"),
                            ("Content-Length", "3"), ("Age", "4"), ("ETag", '"v1"'),
                            ("X-Cache", "MISS")))
    assert kept == (("Content-Type", "text/plain"), ("ETag", '"v1"'))


def entry(*pairs: tuple[str, str], status: int = 200) -> Entry:
    return Entry(status=status, headers=pairs, body=b"x", stored_at=NOW, expires_at=NOW + 60)


def test_conditional_requests():
    tagged = entry(("ETag", '"v1"'), ("Last-Modified", "Tue, 14 Nov 2023 22:13:20 GMT"))
    assert not_modified(h(("If-None-Match", '"v0", W/"v1"')), tagged)
    assert not_modified(h(("If-None-Match", "*")), tagged)
    assert not not_modified(h(("If-None-Match", '"v2"')), tagged)
    # If-None-Match wins over If-Modified-Since
    assert not not_modified(h(("If-None-Match", '"v2"'),
                              ("If-Modified-Since", "Wed, 15 Nov 2023 00:00:00 GMT")), tagged)
    assert not_modified(h(("If-Modified-Since", "Wed, 15 Nov 2023 00:00:00 GMT")), tagged)
    assert not not_modified(h(("If-Modified-Since", "Mon, 13 Nov 2023 00:00:00 GMT")), tagged)
    assert not not_modified(h(("If-None-Match", '"v1"')), entry(("ETag", '"v1"'), status=404))
    assert not not_modified(h(), tagged)
