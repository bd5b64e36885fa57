"""Route matching, match order, 404/405, hosts, headers and the forwarded path."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from pygate.config import RouteConfig
from pygate.router import Match, Route, Router, TemplateError, compile_path
from pygate.sanitize import normalize_path


def route(name: str, path: str, **extra: Any) -> RouteConfig:
    return RouteConfig.model_validate({"name": name, "path": path, "upstream": "u", **extra})


def match(router: Router, path: str, method: str = "GET", host: str = "",
          headers: dict[str, str] | None = None) -> Match:
    return router.match(method, path, host, CIMultiDict(headers or {}))


def matched(router: Router, path: str, **kwargs: Any) -> str | None:
    found = match(router, path, **kwargs)
    return found.route.name if found.route is not None else None


# ---------------------------------------------------------------------------
# compile_path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "hits", "misses"),
    [
        ("/api/users", ["/api/users", "/api/users/", "/api/users/7", "/api/users/7/orders"],
         ["/api/usersX", "/api/user", "/api", "/", "/x/api/users", "/API/users"]),
        ("/", ["/", "/anything", "/a/b/c"], []),
        ("/api/users/", ["/api/users", "/api/users/7"], ["/api/usersX"]),
    ],
)
def test_prefix_matches_whole_segments(path: str, hits: list[str], misses: list[str]) -> None:
    compiled = compile_path(path)
    assert not compiled.is_template
    for hit in hits:
        assert compiled.match(hit) == {}, hit
    for miss in misses:
        assert compiled.match(miss) is None, miss


def test_param_is_one_segment() -> None:
    compiled = compile_path("/api/users/{id}")
    assert compiled.is_template
    assert compiled.params == ["id"]
    assert compiled.match("/api/users/7") == {"id": "7"}
    assert compiled.match("/api/users/7/") == {"id": "7"}
    assert compiled.match("/api/users/a b") == {"id": "a b"}
    assert compiled.match("/api/users/7/orders") is None
    assert compiled.match("/api/users") is None
    assert compiled.match("/api/users/") is None
    assert compiled.match("/api/usersX/7") is None


def test_params_between_literals() -> None:
    compiled = compile_path("/orgs/{org}/repos/{repo}")
    assert compiled.literal_count == 2
    assert compiled.prefix == "/orgs"
    assert compiled.match("/orgs/acme/repos/gate") == {"org": "acme", "repo": "gate"}
    assert compiled.match("/orgs/acme/issues/gate") is None


def test_path_param_takes_the_rest() -> None:
    compiled = compile_path("/files/{rest:path}")
    assert compiled.path_params == frozenset({"rest"})
    assert compiled.match("/files/a/b/c.txt") == {"rest": "a/b/c.txt"}
    assert compiled.match("/files/a") == {"rest": "a"}
    assert compiled.match("/files") == {"rest": ""}
    assert compiled.match("/filesX/a") is None


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("api/users", "starting with '/'"),
        ("/api/{id", "whole segment"),
        ("/api/id}", "whole segment"),
        ("/api/x{id}", "whole segment"),
        ("/api/{id}x", "whole segment"),
        ("/api/{1id}", "whole segment"),
        ("/api/{id:int}", "whole segment"),
        ("/api/{}", "whole segment"),
        ("/api/{id}/{id}", "appears twice"),
        ("/api/{rest:path}/x", "must be the last segment"),
        ("/api/../admin", "dot-segments"),
        ("/api/./x", "dot-segments"),
    ],
)
def test_bad_templates(path: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        compile_path(path)


# ---------------------------------------------------------------------------
# Match order
# ---------------------------------------------------------------------------


def test_more_literal_segments_first() -> None:
    router = Router([
        route("v2", "/api/v2"),
        route("by-id", "/api/v2/users/{id}"),
        route("admin", "/api/v2/users/admin"),
    ])
    assert [r.name for r in router.routes] == ["admin", "by-id", "v2"]
    assert matched(router, "/api/v2/users/admin") == "admin"
    assert matched(router, "/api/v2/users/admin/x") == "admin"
    assert matched(router, "/api/v2/users/7") == "by-id"
    assert match(router, "/api/v2/users/7").params == {"id": "7"}
    assert matched(router, "/api/v2/users/7/orders") == "v2"
    assert matched(router, "/api/v2") == "v2"
    assert matched(router, "/api/v3") is None


def test_templates_before_prefixes_at_equal_literal_count() -> None:
    router = Router([
        route("prefix", "/api/users"),
        route("template", "/api/users/{id}"),
        route("other-prefix", "/api/orders"),
    ])
    # both have two literal segments: the template goes first
    assert [r.name for r in router.routes][:1] == ["template"]
    assert matched(router, "/api/users/7") == "template"
    assert matched(router, "/api/users") == "prefix"
    assert matched(router, "/api/users/7/orders") == "prefix"


def test_more_constraints_first_then_file_order() -> None:
    router = Router([
        route("plain", "/api"),
        route("plain-too", "/api"),
        route("get", "/api", methods=["GET"]),
        route("get-host", "/api", methods=["GET"], hosts=["api.example.com"]),
        route("header-only", "/api", headers={"X-Client": "mobile"}),
    ])
    order = [r.name for r in router.routes]
    assert order == ["get-host", "get", "header-only", "plain", "plain-too"]
    assert matched(router, "/api", host="api.example.com") == "get-host"
    assert matched(router, "/api", host="other.example.com") == "get"
    assert matched(router, "/api", method="POST") == "plain"
    assert matched(router, "/api", method="POST", headers={"X-Client": "mobile"}) == "header-only"


def test_sort_key_is_stable_for_identical_routes() -> None:
    router = Router([route(f"r{i}", "/same") for i in range(5)])
    assert [r.name for r in router.routes] == ["r0", "r1", "r2", "r3", "r4"]
    assert [r.index for r in router.routes] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------
# Methods, hosts, headers
# ---------------------------------------------------------------------------


def test_method_mismatch_is_405_with_allowed_methods() -> None:
    router = Router([
        route("read", "/api/users", methods=["GET"]),
        route("write", "/api/users", methods=["POST", "PUT"]),
        route("other", "/api/orders"),
    ])
    ok = match(router, "/api/users", method="PUT")
    assert ok.status == 200 and ok.route is not None and ok.route.name == "write"
    refused = match(router, "/api/users/7", method="DELETE")
    assert refused.route is None
    assert refused.status == 405
    assert refused.allowed == frozenset({"GET", "POST", "PUT"})
    missing = match(router, "/api/nothing", method="DELETE")
    assert missing.status == 404
    assert missing.allowed == frozenset()


def test_405_only_when_the_method_is_the_only_difference() -> None:
    router = Router([
        route("mobile", "/api", methods=["GET"], headers={"X-Client": "mobile"}),
        route("hosted", "/api", methods=["GET"], hosts=["api.example.com"]),
    ])
    # header and host both differ: not a method problem
    assert match(router, "/api", method="POST").status == 404
    assert match(router, "/api", method="GET").status == 404
    refused = match(router, "/api", method="POST", host="api.example.com")
    assert refused.status == 405 and refused.allowed == frozenset({"GET"})


def test_any_method_route_catches_what_a_method_route_refuses() -> None:
    router = Router([
        route("users-get", "/api/users", methods=["GET"]),
        route("api", "/api"),
    ])
    assert matched(router, "/api/users", method="DELETE") == "api"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "exact"),
        ("a.example.com", "wildcard"),
        ("a.b.example.com", "wildcard"),
        ("example.com", "fallback"),
        ("badexample.com", "fallback"),
        ("example.com.evil.org", "fallback"),
        ("", "fallback"),
    ],
)
def test_hosts(host: str, expected: str) -> None:
    router = Router([
        route("fallback", "/"),
        route("wildcard", "/", hosts=["*.example.com"]),
        route("exact", "/", hosts=["api.example.com"], methods=["GET"]),
    ])
    assert matched(router, "/x", host=host) == expected


def test_hosts_in_config_are_case_insensitive() -> None:
    router = Router([route("r", "/", hosts=["API.Example.com", "*.Example.ORG"])])
    assert matched(router, "/", host="api.example.com") == "r"
    assert matched(router, "/", host="x.example.org") == "r"


def test_headers_exact_match() -> None:
    router = Router([
        route("web", "/api/home"),
        route("mobile", "/api/home", headers={"X-Client": "mobile"}),
    ])
    assert matched(router, "/api/home", headers={"X-Client": "mobile"}) == "mobile"
    assert matched(router, "/api/home", headers={"x-client": "mobile"}) == "mobile"
    assert matched(router, "/api/home", headers={"X-Client": "Mobile"}) == "web"
    assert matched(router, "/api/home", headers={"X-Client": "mobile2"}) == "web"
    assert matched(router, "/api/home") == "web"


def test_all_headers_must_match() -> None:
    router = Router([route("both", "/", headers={"X-A": "1", "X-B": "2"})])
    assert matched(router, "/", headers={"X-A": "1", "X-B": "2"}) == "both"
    assert matched(router, "/", headers={"X-A": "1"}) is None


def test_lookup_ignores_the_method() -> None:
    router = Router([route("get", "/api", methods=["GET"])])
    found = router.lookup("/api/x", "", {})
    assert found is not None and found.name == "get"
    assert router.lookup("/other", "", {}) is None


def test_explain_says_why() -> None:
    router = Router([
        route("users", "/api/users", methods=["GET"]),
        route("mobile", "/api/users", headers={"X-Client": "mobile"}),
        route("by-id", "/api/users/{id}"),
    ])
    found, lines = router.explain("GET", "/api/users/7", "", {})
    assert found.route is not None and found.route.name == "by-id"
    assert len(lines) == 1 and "MATCH" in lines[0] and "id='7'" in lines[0]

    found, lines = router.explain("POST", "/api/users", "", {})
    assert found.status == 405
    assert any("by-id" in line and "does not match" in line for line in lines)
    assert any("mobile" in line and "X-Client" in line for line in lines)
    assert any("method POST not in ['GET']" in line for line in lines)


# ---------------------------------------------------------------------------
# Route.upstream_path
# ---------------------------------------------------------------------------


def forwarded(config: RouteConfig, raw: str) -> str:
    router = Router([config])
    path, encoded, _ = normalize_path(raw)
    found = match(router, path)
    assert found.route is not None
    the_route: Route = found.route
    return the_route.upstream_path(path, encoded, found.params)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/users", "/"),
        ("/api/users/", "/"),
        ("/api/users/7", "/7"),
        ("/api/users/7/orders", "/7/orders"),
        ("/api/users/a%20b", "/a%20b"),
        ("/api/users/caf%C3%A9", "/caf%C3%A9"),
        ("/api/users/x/../7", "/7"),
    ],
)
def test_strip_path(raw: str, expected: str) -> None:
    assert forwarded(route("r", "/api/users"), raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/users", "/api/users"),
        ("/api/users/7?x=1", "/api/users/7"),
        ("/api/users/a%20b", "/api/users/a%20b"),
        ("/api/x/../users/7", "/api/users/7"),
    ],
)
def test_no_strip_path(raw: str, expected: str) -> None:
    assert forwarded(route("r", "/api/users", strip_path=False), raw) == expected


def test_root_prefix_forwards_the_whole_path() -> None:
    assert forwarded(route("r", "/"), "/a/b") == "/a/b"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/v2/users/7", "/users/7"),
        ("/api/v2/users/a%20b", "/users/a%20b"),
        ("/api/v2/users/a%3Fb", "/users/a%3Fb"),
        ("/api/v2/users/a%25b", "/users/a%25b"),
        ("/api/v2/users/caf%C3%A9", "/users/caf%C3%A9"),
        ("/api/v2/users/a&b=c", "/users/a&b=c"),
    ],
)
def test_template_rewrite_encodes_params(raw: str, expected: str) -> None:
    config = route("r", "/api/v2/users/{id}", rewrite="/users/{id}")
    assert forwarded(config, raw) == expected


def test_template_rewrite_with_path_param_keeps_slashes() -> None:
    config = route("r", "/static/{rest:path}", rewrite="/assets/{rest}")
    assert forwarded(config, "/static/css/a%20b.css") == "/assets/css/a%20b.css"
    assert forwarded(config, "/static") == "/assets/"


def test_template_rewrite_reorders_params() -> None:
    config = route("r", "/orgs/{org}/repos/{repo}", rewrite="/repos/{repo}/of/{org}")
    assert forwarded(config, "/orgs/acme/repos/gate") == "/repos/gate/of/acme"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/users", "/users"),
        ("/api/users/", "/users/"),
        ("/api/users/7", "/users/7"),
        ("/api/users/a%20b", "/users/a%20b"),
    ],
)
def test_prefix_rewrite_replaces_the_prefix(raw: str, expected: str) -> None:
    assert forwarded(route("r", "/api/users", rewrite="/users"), raw) == expected


def test_prefix_rewrite_to_root() -> None:
    config = route("r", "/api/users", rewrite="/")
    assert forwarded(config, "/api/users") == "/"
    assert forwarded(config, "/api/users/7") == "/7"


def test_prefix_rewrite_applies_without_strip_path() -> None:
    config = route("r", "/api/users", rewrite="/v1/users", strip_path=False)
    assert forwarded(config, "/api/users/7") == "/v1/users/7"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/v2/users/7", "/7"),
        ("/api/v2/users/a%20b", "/a%20b"),
        ("/api/v2/users/7/", "/7/"),
    ],
)
def test_template_without_rewrite_strips_literal_prefix(raw: str, expected: str) -> None:
    assert forwarded(route("r", "/api/v2/users/{id}"), raw) == expected


def test_template_strip_path_false_forwards_the_path() -> None:
    config = route("r", "/api/v2/users/{id}", strip_path=False)
    assert forwarded(config, "/api/v2/users/a%20b") == "/api/v2/users/a%20b"


def test_template_without_literal_prefix_forwards_the_path() -> None:
    assert forwarded(route("r", "/{tenant}/items"), "/acme/items") == "/acme/items"
