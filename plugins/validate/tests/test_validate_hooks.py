"""The plugin through an in-process gateway and a real upstream: what passes, what is
refused and how, and that the upstream sees valid requests unchanged."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pygate_validate
import pytest
import yaml
from validate_docs import USER_SCHEMA_FILE, USERS_30, orders_31

pytest_plugins = ["pygate.testing"]

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    (tmp_path / "users.yaml").write_text(USERS_30)
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "user.yaml").write_text(USER_SCHEMA_FILE)
    (tmp_path / "orders.json").write_text(orders_31())
    (tmp_path / "orders.yaml").write_text(yaml.safe_dump(json.loads(orders_31()), sort_keys=False))
    return tmp_path


async def start(pygate_gateway: Any, fake_upstream: Any, docs: Path, settings: dict[str, Any],
                path: str = "/api", **gateway: Any) -> tuple[Any, Any]:
    upstream = await fake_upstream()
    config: dict[str, Any] = {
        "plugins": {"validate": settings},
        "routes": [{"name": "api", "path": path, "upstream": upstream.url}],
    }
    if gateway:
        config["gateway"] = gateway
    gw = await pygate_gateway(config, plugins={"validate": pygate_validate}, base_dir=str(docs))
    return gw, upstream


def errors_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["in"], e["pointer"]) for e in body["errors"]]


# ---------------------------------------------------------------------------
# Valid requests pass unchanged
# ---------------------------------------------------------------------------


async def test_valid_requests_reach_the_upstream_unchanged(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    body = (b'{"name": "Zo\xc3\xab",  "email": "zoe@example.com",\n "id": '
            b'"3f1c1d2e-8a4b-4c1d-9e2f-1a2b3c4d5e6f", "born": "1990-05-04T10:00:00Z", '
            b'"birthday": "1990-05-04", "site": "https://zoe.example.com/x", "ip": "10.0.0.1", '
            b'"ip6": "::1", "nick": null, "age": 34, "since": "2020-01-01", "created": "x"}')
    status, _, _ = await gw.request("POST", "/api/users", data=body, headers=JSON)
    assert status == 200
    sent = upstream.requests[-1]
    assert sent.body == body  # byte for byte, whitespace and all
    assert sent.path == "/users" and sent.headers["Content-Length"] == str(len(body))

    status, _, _ = await gw.request(
        "GET", "/api/users?limit=5&tag=a&tag=b&fields=name,email&filter%5Bage%5D=3&x=unknown")
    assert status == 200
    assert upstream.requests[-1].query == (
        "limit=5&tag=a&tag=b&fields=name,email&filter%5Bage%5D=3&x=unknown")
    status, _, _ = await gw.request("GET", "/api/users/7", headers={"X-Mode": "fast",
                                                                    "X-Trace": "1, 2"})
    assert status == 200
    assert len(upstream.requests) == 3


async def test_a_body_the_description_has_no_schema_for_streams_through(
        pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    status, _, _ = await gw.request("POST", "/api/users", data=b"just text",
                                    headers={"Content-Type": "text/plain"})
    assert status == 200
    assert upstream.requests[-1].body == b"just text"
    # an operation without a request body: whatever comes streams on
    status, _, _ = await gw.request("GET", "/api/users/me", data=b"\xff\x00 not json",
                                    headers=JSON)
    assert status == 200
    assert upstream.requests[-1].body == b"\xff\x00 not json"


async def test_a_large_valid_body_is_checked_and_forwarded_whole(
        pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/")
    note = "n" * 400_000  # past the size checked off the event loop
    body = json.dumps({"item": "book", "count": 2, "note": note}).encode()

    async def chunks() -> Any:  # chunked: no Content-Length from the client
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    status, _, _ = await gw.request("POST", "/orders", data=chunks(), headers=JSON)
    assert status == 200
    assert upstream.requests[-1].body == body
    status, _, problem = await gw.request(
        "POST", "/orders", data=json.dumps({"item": "book", "count": 0, "x": note}),
        headers=JSON)
    assert status == 400
    assert errors_of(problem) == [("body", "/count"), ("body", "")]
    assert len(upstream.requests) == 1


# ---------------------------------------------------------------------------
# Violations: all of them, in one 400, and no upstream call
# ---------------------------------------------------------------------------


async def test_parameter_violations_are_listed_together(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    status, headers, problem = await gw.request(
        "GET", "/api/users/abc", headers={"X-Mode": "slow", "X-Trace": "1,two"})
    assert status == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["title"] == "Bad Request" and problem["route"] == "api"
    assert problem["detail"] == "request validation failed: 3 errors"
    assert problem["errors"] == [
        {"in": "path", "pointer": "/id", "message": "'abc' is not of type 'integer'"},
        {"in": "header", "pointer": "/X-Mode",
         "message": "'slow' is not one of ['fast', 'full']"},
        {"in": "header", "pointer": "/X-Trace/1", "message": "'two' is not of type 'integer'"},
    ]
    status, _, problem = await gw.request("GET", "/api/users?fields=name,bad&filter%5Bage%5D=x")
    assert status == 400
    assert problem["errors"] == [
        {"in": "query", "pointer": "/limit",
         "message": "required query parameter 'limit' is missing"},
        {"in": "query", "pointer": "/fields/1",
         "message": "'bad' is not one of ['name', 'email']"},
        {"in": "query", "pointer": "/filter/age", "message": "'x' is not of type 'integer'"},
    ]
    status, _, problem = await gw.request("GET", "/api/users?limit=500&limit=1")
    assert status == 400
    assert problem["errors"] == [{"in": "query", "pointer": "/limit",
                                  "message": "given 2 times; expected once"}]
    status, _, problem = await gw.request("GET", "/api/users/0")
    assert errors_of(problem) == [("path", "/id"), ("header", "/X-Mode")]
    assert problem["errors"][1]["message"] == "required header parameter 'X-Mode' is missing"
    assert upstream.requests == []


async def test_body_violations_are_listed_together(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    status, _, problem = await gw.request("POST", "/api/users", json={
        "name": 5, "id": "not-a-uuid", "born": "yesterday", "age": 2**40, "since": "2021"},
        headers={"X-Mode": "slow"})
    assert status == 400
    assert problem["errors"] == [
        {"in": "body", "pointer": "/email", "message": "'email' is a required property"},
        {"in": "body", "pointer": "/name", "message": "5 is not of type 'string'"},
        {"in": "body", "pointer": "/id", "message": "'not-a-uuid' is not a valid uuid"},
        {"in": "body", "pointer": "/born", "message": "'yesterday' is not a valid date-time"},
        {"in": "body", "pointer": "/age", "message": "1099511627776 is not a valid int32"},
        {"in": "body", "pointer": "/since", "message": "'2021' is not one of ['2020-01-01']"},
    ]
    status, _, problem = await gw.request("POST", "/api/users", json={
        "name": "a", "email": "not an email", "birthday": "2020-02-30", "site": "no scheme",
        "ip": "300.1.1.1", "ip6": "::g"})
    assert status == 400
    assert [(e["pointer"], e["message"]) for e in problem["errors"]] == [
        ("/email", "'not an email' is not a valid email"),
        ("/birthday", "'2020-02-30' is not a valid date"),
        ("/site", "'no scheme' is not a valid uri"),
        ("/ip", "'300.1.1.1' is not a valid ipv4"),
        ("/ip6", "'::g' is not a valid ipv6"),
    ]
    assert upstream.requests == []


async def test_parameters_and_body_are_listed_in_one_answer(pygate_gateway, fake_upstream,
                                                           docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    status, _, problem = await gw.request("PUT", "/api/users/x", json={"manager": 0})
    assert status == 400
    assert errors_of(problem) == [("path", "/id"), ("body", "/name"), ("body", "/manager")]
    assert upstream.requests == []


async def test_a_missing_required_body(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/")
    for data in (None, b"", b"  "):
        status, _, problem = await gw.request("POST", "/orders", data=data, headers=JSON)
        assert status == 400
        assert problem["errors"] == [{"in": "body", "pointer": "",
                                      "message": "a request body is required"}]
    assert upstream.requests == []


# ---------------------------------------------------------------------------
# Media types
# ---------------------------------------------------------------------------


async def test_unsupported_media_types_get_415(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/")
    status, _, problem = await gw.request("POST", "/orders", data=b"item=book",
                                          headers={"Content-Type": "application/x-www-form-"
                                                                   "urlencoded"})
    assert status == 415
    assert problem["title"] == "Unsupported Media Type"
    assert problem["errors"] == [{"in": "body", "pointer": "", "message": (
        "Content-Type application/x-www-form-urlencoded is not accepted here; expected "
        "application/json")}]
    status, _, problem = await gw.request("POST", "/orders", data=b'{"item": "a"}',
                                          skip_auto_headers={"Content-Type"})
    assert status == 415
    assert "without Content-Type" in problem["errors"][0]["message"]
    packed = gzip.compress(b'{"item": "book", "count": 1}')
    status, headers, problem = await gw.request(
        "POST", "/orders", data=packed, headers={**JSON, "Content-Encoding": "gzip"})
    assert status == 415
    assert headers["Accept-Encoding"] == "identity"
    assert "Content-Encoding gzip" in problem["errors"][0]["message"]
    # a charset parameter and a +json type are still JSON
    status, _, _ = await gw.request("POST", "/orders", data=b'{"item": "a", "count": 1}',
                                    headers={"Content-Type": "application/json; charset=UTF-8"})
    assert status == 200
    assert len(upstream.requests) == 1


# ---------------------------------------------------------------------------
# Whatever a client sends: 400 with a message, never 500
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b"{'item': 1}", "not valid JSON: Expecting property name enclosed in double quotes "
                     "(line 1, column 2)"),
    (b'{"item": "a", "count": 1} trailing', "not valid JSON: Extra data (line 1, column 27)"),
    (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
    (b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper than 64 levels"),
    (b'{"item": "a", "count": ' + b"9" * 5000 + b"}",
     "not valid JSON: a number has more than 4300 digits"),
    (b'{"item": "a", "count": 1e999}', "not valid JSON: a number is too large"),
    (b'{"item": "a", "count": NaN}', "not valid JSON: NaN is not a JSON value"),
])
async def test_broken_bodies_get_400(pygate_gateway, fake_upstream, docs, body, message):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/")
    status, _, problem = await gw.request("POST", "/orders", data=body, headers=JSON)
    assert status == 400
    assert problem["errors"] == [{"in": "body", "pointer": "", "message": message}]
    assert upstream.requests == []


async def test_odd_values_get_400(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/")
    huge = "9" * 5000
    cases = [
        (f"/orders/{huge}", [("path", "/id")]),
        ("/orders/3f1c1d2e-8a4b-4c1d-9e2f-1a2b3c4d5e6f?when=%FF%FE", [("query", "/when")]),
        ("/orders/3f1c1d2e-8a4b-4c1d-9e2f-1a2b3c4d5e6f?when=2020-13-01&q=%7B%22a%22%3A%22x%22%7D",
         [("query", "/when"), ("query", "/q/a")]),
        ("/orders/3f1c1d2e-8a4b-4c1d-9e2f-1a2b3c4d5e6f?q=not-json", [("query", "/q")]),
        ("/orders/3f1c1d2e-8a4b-4c1d-9e2f-1a2b3c4d5e6f?q=%5B" + "%5B" * 200, [("query", "/q")]),
    ]
    for path, expected in cases:
        status, _, problem = await gw.request("GET", path)
        assert status == 400, path
        assert errors_of(problem) == expected, path
    status, _, problem = await gw.request("POST", "/orders", json={
        "item": "x" * 100_000, "count": 1, "contact": "\udcff@example.com"[1:]})
    assert status == 400
    message = problem["errors"][0]["message"]
    assert len(message) < 300 and message.endswith("is not of type 'integer'") is False
    assert upstream.requests == []
    # the values the description allows still pass
    status, _, _ = await gw.request(
        "GET", "/orders/3f1c1d2e-8a4b-4c1d-9e2f-1a2b3c4d5e6f?when=2020-01-31&q=%7B%22a%22%3A1%7D")
    assert status == 200


# ---------------------------------------------------------------------------
# Matching, strict, servers, dialects
# ---------------------------------------------------------------------------


async def test_strict_refuses_what_the_document_does_not_describe(
        pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs,
                               {"openapi": "users.yaml", "strict": True})
    status, _, problem = await gw.request("GET", "/api/nothing")
    assert status == 404
    assert problem["detail"] == "the API description has no operation for GET /api/nothing"
    status, headers, _ = await gw.request("DELETE", "/api/users/7")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD, PUT"
    status, _, _ = await gw.request("HEAD", "/api/users/me")  # HEAD is GET's
    assert status == 200
    assert [r.method for r in upstream.requests] == ["HEAD"]


async def test_without_strict_undescribed_requests_pass(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    assert (await gw.request("GET", "/api/nothing?limit=x"))[0] == 200
    assert (await gw.request("DELETE", "/api/users/abc"))[0] == 200
    assert [r.path for r in upstream.requests] == ["/nothing", "/users/abc"]


async def test_literal_paths_win_and_partial_segments_match(pygate_gateway, fake_upstream,
                                                            docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs,
                               {"openapi": "users.yaml", "strict": True})
    assert (await gw.request("GET", "/api/users/me"))[0] == 200  # not /users/{id}
    assert upstream.requests[-1].headers.get("X-Mode") is None  # no X-Mode needed
    assert (await gw.request("GET", "/api/files/notes.md"))[0] == 200
    status, _, problem = await gw.request("GET", "/api/files/n.pdf")
    assert status == 400
    assert errors_of(problem) == [("path", "/name"), ("path", "/ext")]
    assert (await gw.request("GET", "/api/colors/.1.2.3"))[0] == 200  # label, exploded
    status, _, problem = await gw.request("GET", "/api/colors/.1.x")
    assert errors_of(problem) == [("path", "/list/1")]
    assert (await gw.request("GET", "/api/points/;point=x,1,y,2"))[0] == 200  # matrix
    status, _, problem = await gw.request("GET", "/api/points/;point=x,a,y,b")
    assert errors_of(problem) == [("path", "/point/x"), ("path", "/point/y")]
    assert (await gw.request("GET", "/api/users/"))[0] == 404  # exact: no trailing slash


async def test_the_servers_base_path_or_base_path(pygate_gateway, fake_upstream, docs):
    # the document's paths sit under /api (its servers URL); the route is at /
    gw, upstream = await start(pygate_gateway, fake_upstream, docs,
                               {"openapi": "users.yaml", "strict": True}, path="/")
    assert (await gw.request("GET", "/api/users?limit=1"))[0] == 200
    assert (await gw.request("GET", "/users?limit=1"))[0] == 404
    assert [r.path for r in upstream.requests] == ["/api/users"]
    # base_path: a service's own document, mounted at the route's prefix
    gw2, _ = await start(pygate_gateway, fake_upstream, docs,
                         {"openapi": "users.yaml", "strict": True, "base_path": "/v2/people"},
                         path="/v2/people")
    assert (await gw2.request("GET", "/v2/people/users?limit=1"))[0] == 200
    status, _, problem = await gw2.request("GET", "/v2/people/users?limit=x")
    assert status == 400
    assert errors_of(problem) == [("query", "/limit")]
    assert (await gw2.request("GET", "/v2/people/api/users?limit=1"))[0] == 404


async def test_openapi_30_nullable(pygate_gateway, fake_upstream, docs):
    gw, _ = await start(pygate_gateway, fake_upstream, docs, {"openapi": "users.yaml"})
    ok = {"name": "a", "email": "a@example.com", "nick": None}
    assert (await gw.request("POST", "/api/users", json=ok))[0] == 200
    status, _, problem = await gw.request("POST", "/api/users", json={**ok, "name": None})
    assert status == 400
    assert problem["errors"] == [{"in": "body", "pointer": "/name",
                                  "message": "null is not of type 'string'"}]


@pytest.mark.parametrize("document", ["orders.json", "orders.yaml"])
async def test_openapi_31_document(pygate_gateway, fake_upstream, docs, document):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": document},
                               path="/")
    assert (await gw.request("POST", "/orders", json={"item": "a", "count": 1,
                                                      "note": None}))[0] == 200
    status, _, problem = await gw.request("POST", "/orders", json={
        "item": "a", "count": 0, "note": 5, "contact": "x", "extra": True})
    assert status == 400
    assert problem["errors"] == [
        {"in": "body", "pointer": "/count", "message": "0 is less than or equal to the minimum "
                                                       "of 0"},
        {"in": "body", "pointer": "/note", "message": "5 is not of type 'string', 'null'"},
        {"in": "body", "pointer": "/contact", "message": "'x' is not a valid email"},
        {"in": "body", "pointer": "", "message": "Additional properties are not allowed "
                                                 "('extra' was unexpected)"},
    ]
    status, _, problem = await gw.request("GET", "/orders/42")
    assert problem["errors"] == [{"in": "path", "pointer": "/id",
                                  "message": "'42' is not a valid uuid"}]
    assert len(upstream.requests) == 1


# ---------------------------------------------------------------------------
# Per-route JSON Schema files
# ---------------------------------------------------------------------------


async def test_per_route_json_schema_files(pygate_gateway, fake_upstream, tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "new-user.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "required": ["email"],
        "properties": {"email": {"type": "string", "format": "email"},
                       "team": {"$ref": "team.json"}}}))
    (tmp_path / "schemas" / "team.json").write_text('{"type": "string", "enum": ["a", "b"]}')
    (tmp_path / "schemas" / "list.json").write_text(json.dumps({
        "type": "object",
        "properties": {"page": {"type": "integer", "minimum": 1},
                       "sort": {"type": "array", "items": {"enum": ["name", "age"]}},
                       "active": {"type": "boolean"}},
        "additionalProperties": False}))
    upstream = await fake_upstream()
    gw = await pygate_gateway({"routes": [
        {"name": "signup", "path": "/signup", "upstream": upstream.url,
         "plugins": {"validate": {"body_schema": "schemas/new-user.json"}}},
        {"name": "list", "path": "/list", "upstream": upstream.url,
         "plugins": {"validate": {"query_schema": "schemas/list.json"}}},
        {"name": "open", "path": "/open", "upstream": upstream.url},
    ]}, plugins={"validate": pygate_validate}, base_dir=str(tmp_path))
    body = b'{"email": "a@example.com", "team": "a"}'
    assert (await gw.request("POST", "/signup", data=body, headers=JSON))[0] == 200
    assert upstream.requests[-1].body == body
    status, _, problem = await gw.request("POST", "/signup", json={"email": "x", "team": "c"})
    assert status == 400
    assert errors_of(problem) == [("body", "/email"), ("body", "/team")]
    status, _, problem = await gw.request("POST", "/signup", data=b"email=a",
                                          headers={"Content-Type": "text/plain"})
    assert status == 415
    status, _, problem = await gw.request("POST", "/signup")
    assert problem["errors"][0]["message"] == "a request body is required"
    assert (await gw.request("GET", "/signup"))[0] == 200  # no body on a GET: nothing to check
    assert (await gw.request("GET", "/list?page=2&sort=name&sort=age&active=true"))[0] == 200
    status, _, problem = await gw.request("GET", "/list?page=0&sort=size&active=yes&debug=1")
    assert status == 400
    assert errors_of(problem) == [("query", "/page"), ("query", "/sort/0"),
                                  ("query", "/active"), ("query", "")]
    assert (await gw.request("POST", "/open", data=b"anything"))[0] == 200  # plugin off here
    assert len(upstream.requests) == 4


# ---------------------------------------------------------------------------
# Body limits and Expect
# ---------------------------------------------------------------------------


async def test_a_body_over_max_body_gets_413(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/", max_body="1KB")
    big = json.dumps({"item": "x" * 5000, "count": 1}).encode()
    status, _, problem = await gw.request("POST", "/orders", data=big, headers=JSON)
    assert status == 413
    assert problem["detail"] == "request body exceeds the gateway's max_body"

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 512):
            yield big[start:start + 512]

    status, _, _ = await gw.request("POST", "/orders", data=chunks(), headers=JSON)
    assert status == 413
    assert upstream.requests == []
    assert (await gw.request("POST", "/orders", json={"item": "x", "count": 1}))[0] == 200


async def test_expect_100_continue(pygate_gateway, fake_upstream, docs):
    gw, upstream = await start(pygate_gateway, fake_upstream, docs, {"openapi": "orders.json"},
                               path="/")
    body = b'{"item": "a", "count": 3}'
    async with gw.session.post(gw.url + "/orders", data=body, headers=JSON,
                               expect100=True) as response:
        assert response.status == 200
    assert upstream.requests[-1].body == body
    async with gw.session.post(gw.url + "/orders", data=b'{"item": 1}', headers=JSON,
                               expect100=True) as response:
        assert response.status == 400
        problem = await response.json(content_type=None)
    assert errors_of(problem) == [("body", "/count"), ("body", "/item")]
    assert len(upstream.requests) == 1
