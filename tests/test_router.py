"""Route matching, match order, 404/405, hosts, headers and the forwarded path."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from pygate.config import RouteConfig
from pygate.router import Match, Route, Router, TemplateError, compile_path
from pygate.sanitize import normalize_path


def route(name: str, path: str, **extra: Any) -> RouteConfig:
    return RouteConfig.model_validate({"name": name, "path": path, "upstream": "u", **extra})


def match(router: Router, path: str, method: str = "GET", host: str = "",
          headers: dict[str, str] | None = None) -> Match:
    return router.match(method, path, host, CIMultiDict(headers or {}))


def status(found: Match) -> int:
    """What the pipeline answers for ``found``: a route (200 here), 405 or 404."""
    if found.route is not None:
        return 200
    return 405 if found.allowed else 404


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
    assert status(ok) == 200 and ok.route is not None and ok.route.name == "write"
    refused = match(router, "/api/users/7", method="DELETE")
    assert refused.route is None
    assert status(refused) == 405
    assert refused.allowed == frozenset({"GET", "POST", "PUT"})
    missing = match(router, "/api/nothing", method="DELETE")
    assert status(missing) == 404
    assert missing.allowed == frozenset()


def test_405_only_when_the_method_is_the_only_difference() -> None:
    router = Router([
        route("mobile", "/api", methods=["GET"], headers={"X-Client": "mobile"}),
        route("hosted", "/api", methods=["GET"], hosts=["api.example.com"]),
    ])
    # header and host both differ: not a method problem
    assert status(match(router, "/api", method="POST")) == 404
    assert status(match(router, "/api", method="GET")) == 404
    refused = match(router, "/api", method="POST", host="api.example.com")
    assert status(refused) == 405 and refused.allowed == frozenset({"GET"})


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
    assert status(found) == 405
    assert any("by-id" in line and "does not match" in line for line in lines)
    assert any("mobile" in line and "X-Client" in line for line in lines)
    assert any("method POST not in ['GET']" in line for line in lines)


# ---------------------------------------------------------------------------
# Route.upstream_path
# ---------------------------------------------------------------------------


def forwarded(config: RouteConfig, raw: str, *, ignore_case: bool = False) -> str:
    router = Router([config], ignore_case=ignore_case)
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


def test_path_param_takes_newlines_too() -> None:
    router = Router([route("files", "/files/{rest:path}"), route("all", "/")])
    assert match(router, "/files/a\nb/c").params == {"rest": "a\nb/c"}


# ---------------------------------------------------------------------------
# gateway.path_case = "insensitive"
# ---------------------------------------------------------------------------


def test_ignore_case_matches_literals_and_keeps_params_as_sent() -> None:
    router = Router([
        route("orders", "/api/orders"),
        route("user", "/api/Users/{id}"),
        route("cafe", "/café/menu"),
        route("public", "/"),
    ], ignore_case=True)
    assert matched(router, "/API/ORDERS/7") == "orders"
    assert matched(router, "/api/ordersX") == "public"
    assert match(router, "/API/USERS/AbC").params == {"id": "AbC"}
    assert matched(router, "/CAFÉ/Menu") == "cafe"
    assert matched(router, "/cafe/menu") == "public"
    sensitive = Router([route("orders", "/api/orders"), route("public", "/")])
    assert matched(sensitive, "/API/ORDERS") == "public"


def _ascii_twins() -> list[tuple[str, str]]:
    """Every (ASCII letter, other character) pair that re.IGNORECASE takes as equal."""
    others = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1)
                     if not 0xD800 <= c < 0xE000)
    return [(letter, twin) for letter in "abcdefghijklmnopqrstuvwxyz"
            for twin in re.findall(letter, others, re.IGNORECASE)]


def test_ignore_case_takes_every_non_ascii_twin_of_an_ascii_letter() -> None:
    twins = _ascii_twins()
    assert twins  # dotted and dotless i, Kelvin sign, long s in Python 3.11
    for letter, twin in twins:
        router = Router([route("r", f"/a{letter}z"), route("public", "/")], ignore_case=True)
        assert matched(router, f"/A{twin}Z/x") == "r", (letter, twin)
        router = Router([route("r", f"/a{twin}z"), route("public", "/")], ignore_case=True)
        assert matched(router, f"/A{letter.upper()}Z/x") == "r", (letter, twin)


@pytest.mark.parametrize(
    ("route_path", "raw", "expected"),
    [
        ("/api/status", "/API/STATUS/7", "/7"),
        ("/api/status", "/api/%C5%BFtatus/7", "/7"),  # long s: one character, as s
        ("/api/id", "/api/%C4%B0D/x", "/x"),  # capital dotted I: its lower() has two
        ("/straße", "/STRAẞE/x", "/x"),
    ],
)
def test_ignore_case_strips_the_prefix_as_long_as_the_route(
        route_path: str, raw: str, expected: str) -> None:
    assert forwarded(route("r", route_path), raw, ignore_case=True) == expected


# ---------------------------------------------------------------------------
# The trie against a plain scan of the routes in match order
# ---------------------------------------------------------------------------

# Segments that collide ignoring case, some only as re.IGNORECASE takes them
# (long s is s, the Kelvin sign k, dotless and dotted I are i, the ligature of
# long s and t the ligature st), some whose lower() changes length.
_LITERALS = ["api", "API", "Api", "users", "v2", "x", "status", "\u017ftatus", "STATUS",
             "café", "CAFÉ", "\ufb05", "\ufb06", "id", "ID", "\u0130d", "\u0131d", "k",
             "\u212a", "ß", "\u1e9e"]
_TWINS = str.maketrans({"s": "\u017f", "k": "\u212a", "i": "\u0131", "I": "\u0130",
                        "\u017f": "S", "\u212a": "K", "\u0131": "I", "\u0130": "i"})
_HOSTS = ["a.example.com", "*.example.com", "B.Example.com", "api.example.org"]
_ROUTE_HEADERS: list[dict[str, str]] = [{"X-Client": "mobile"}, {"X-Client": "web"},
                                        {"X-A": "1", "X-Client": "mobile"}]


@st.composite
def _route_paths(draw: st.DrawFn) -> str:
    kinds = draw(st.lists(st.sampled_from(["literal", "literal", "param"]), max_size=4))
    segments = [draw(st.sampled_from(_LITERALS)) if kind == "literal" else f"{{p{i}}}"
                for i, kind in enumerate(kinds)]
    if draw(st.integers(0, 4)) == 0:
        segments.append("{tail:path}")
    return "/" + "/".join(segments) + draw(st.sampled_from(["", "", "/"]))


@st.composite
def _tables(draw: st.DrawFn) -> list[RouteConfig]:
    specs = draw(st.lists(st.fixed_dictionaries({}, optional={
        "methods": st.lists(st.sampled_from(["GET", "POST", "PUT"]), min_size=1, max_size=2,
                            unique=True),
        "hosts": st.lists(st.sampled_from(_HOSTS), min_size=1, max_size=2, unique=True),
        "headers": st.sampled_from(_ROUTE_HEADERS),
    }).flatmap(lambda spec: st.builds(lambda path: {**spec, "path": path}, _route_paths())),
        min_size=1, max_size=10))
    copies = draw(st.lists(st.integers(0, len(specs) - 1), max_size=3))
    specs += [specs[i] for i in copies]  # duplicates: same path and constraints
    return [route(f"r{i}", **spec) for i, spec in enumerate(specs)]


_request_segments = st.sampled_from(_LITERALS) | st.sampled_from(["", "7", "a b", "a\nb"]) \
    | st.text(alphabet="aAsSkK\u0131\u0130\u017f7/é", max_size=4)
_random_paths = st.lists(_request_segments, max_size=5).map(lambda s: "/" + "/".join(s)) \
    | st.sampled_from(["", "*", "api", "/"])


@st.composite
def _paths_near(draw: st.DrawFn, configs: list[RouteConfig]) -> str:
    """A path made from one route's: its literals in some case, values for its params,
    maybe a trailing slash or more segments."""
    config = draw(st.sampled_from(configs))
    out = []
    for segment in (s for s in config.path.split("/") if s):
        if segment.endswith(":path}"):
            out += draw(st.lists(_request_segments, max_size=2))
        elif segment.startswith("{"):
            out.append(draw(_request_segments))
        else:
            out.append(draw(st.sampled_from([segment, segment, segment.upper(),
                                             segment.swapcase(), segment.translate(_TWINS)])))
    ending = draw(st.sampled_from(["", "/", "/", "more"]))
    if ending == "more":
        ending = "/" + "/".join(draw(st.lists(_request_segments, min_size=1, max_size=2)))
    return "/" + "/".join(out) + ending


_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE"])
_request_hosts = st.sampled_from(["", "a.example.com", "b.example.com", "x.a.example.com",
                                  "example.com", "api.example.org"])
_request_headers = st.fixed_dictionaries({}, optional={
    "X-Client": st.sampled_from(["mobile", "web", "Mobile"]), "x-a": st.just("1")})


class Reference:
    """The route table as PRODUCT.md section 3 states it: every route tried in order."""

    def __init__(self, configs: list[RouteConfig], ignore_case: bool) -> None:
        def key(item: tuple[int, RouteConfig]) -> tuple[int, int, int, int]:
            index, config = item
            segments = [s for s in config.path.split("/") if s]
            literals = sum(not s.startswith("{") for s in segments)
            template = any(s.startswith("{") for s in segments)
            constraints = (bool(config.methods) + bool(config.hosts)
                           + len(config.headers or {}))
            return (-literals, 0 if template else 1, -constraints, index)

        self.order = [(index, config, self.path_regex(config.path, ignore_case))
                      for index, config in sorted(enumerate(configs), key=key)]

    @staticmethod
    def path_regex(path: str, ignore_case: bool) -> re.Pattern[str]:
        pattern = ""
        segments = [s for s in path.split("/") if s]
        for segment in segments:
            if segment.endswith(":path}"):
                pattern += f"(?:/(?P<{segment[1:-6]}>.*))?"
            elif segment.startswith("{"):
                pattern += f"/(?P<{segment[1:-1]}>[^/]+)"
            else:
                pattern += "/" + re.escape(segment)
        # a prefix takes whole segments ("/" all paths); a template the whole path, but for
        # a trailing slash when it does not end with {name:path}
        if not any(s.startswith("{") for s in segments):
            tail = r"(?=/|\Z)" if segments else ""
        else:
            tail = r"\Z" if segments[-1].endswith(":path}") else r"/?\Z"
        return re.compile(pattern + tail, re.DOTALL | (re.IGNORECASE if ignore_case else 0))

    def scan(self, method: str | None, path: str, host: str,
             headers: Mapping[str, str]) -> tuple[int | None, dict[str, str], frozenset[str]]:
        allowed: set[str] = set()
        for index, config, regex in self.order:
            found = regex.match(path)
            if found is None:
                continue
            if config.hosts and not any(
                    host == h.lower() or (h.startswith("*.") and host.endswith(h[1:].lower()))
                    for h in config.hosts):
                continue
            if any(headers.get(k) != v for k, v in (config.headers or {}).items()):
                continue
            if method is not None and config.methods and method not in config.methods:
                allowed.update(config.methods)
                continue
            return index, {k: v or "" for k, v in found.groupdict().items()}, frozenset()
        return None, {}, frozenset(allowed)


@settings(max_examples=400, deadline=None)
@given(_tables(), st.booleans(), st.data())
def test_trie_chooses_what_a_plain_scan_chooses(
        configs: list[RouteConfig], ignore_case: bool, data: st.DataObject) -> None:
    router = Router(configs, ignore_case=ignore_case)
    reference = Reference(configs, ignore_case)
    assert [r.index for r in router.routes] == [index for index, _, _ in reference.order]
    paths = st.one_of(_paths_near(configs), _paths_near(configs), _random_paths)
    requests = data.draw(st.lists(st.tuples(_methods, paths, _request_hosts, _request_headers),
                                  min_size=1, max_size=8))
    for method, path, host, raw_headers in requests:
        headers = CIMultiDict(raw_headers)
        want = reference.scan(method, path, host, headers)
        found = router.match(method, path, host, headers)
        got = (found.route.index if found.route else None, found.params, found.allowed)
        assert got == want, (method, path, host, raw_headers)

        explained, _ = router.explain(method, path, host, headers)
        assert explained == found

        tentative = router.lookup(path, host, headers)
        assert (tentative.index if tentative else None) == reference.scan(
            None, path, host, headers)[0]

        for route_ in router.routes:  # each route alone agrees too
            alone = route_.path.match(path)
            plain = Reference.path_regex(route_.config.path, ignore_case).match(path)
            assert (alone is None) == (plain is None), (route_.config.path, path)
