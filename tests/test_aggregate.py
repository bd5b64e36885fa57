"""Aggregate routes without a network: placeholders, the call graph, projections, explain."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from multidict import CIMultiDict

from pygate import Identity
from pygate.aggregate import AggregatePlan
from pygate.aggregate.placeholders import Missing, Scope, split_template
from pygate.aggregate.shape import compile_fields, project, rename
from pygate.app import build_gateway
from pygate.cli import main
from pygate.config import ConfigError, load_data

UP = "http://127.0.0.1:9"


def plan_for(calls: dict[str, Any], path: str = "/agg/{id}", **aggregate: Any
             ) -> AggregatePlan:
    config = load_data({"routes": [{"name": "agg", "path": path,
                                    "aggregate": {"calls": calls, **aggregate}}]})
    gateway = build_gateway(config)
    plan = gateway.router.routes[0].payload.handler.plan
    assert plan is not None
    return plan


def config_errors(calls: dict[str, Any], path: str = "/agg/{id}") -> list[str]:
    config = load_data({"routes": [
        {"name": "plain", "path": "/plain", "upstream": UP},
        {"name": "agg", "path": path, "aggregate": {"calls": calls}},
    ]})
    with pytest.raises(ConfigError) as caught:
        build_gateway(config)
    return [str(issue) for issue in caught.value.issues]


def scope(params: dict[str, str] | None = None, query: str = "",
          headers: dict[str, str] | None = None, identity: Identity | None = None,
          results: dict[str, Any] | None = None) -> Scope:
    found = Scope(params or {}, query, CIMultiDict(headers or {}), identity)
    found.results.update(results or {})
    return found


# ---------------------------------------------------------------------------
# Placeholders


def test_templates_split_into_text_and_placeholders() -> None:
    assert split_template("/users/{order.userId}/x") == [
        (False, "/users/"), (True, "order.userId"), (False, "/x")]
    assert split_template("{id}") == [(True, "id")]
    assert split_template("a{{b}}c") == [(False, "a{b}c")]
    for bad in ("/x/{id", "/x/}", "/x/{}", "/{a{b}}"):
        with pytest.raises(ValueError):
            split_template(bad)


def test_every_kind_of_placeholder_is_rendered_and_encoded_where_it_lands() -> None:
    plan = plan_for({
        "first": {"upstream": UP, "path": "/a/{id}/{order.customer.id}",
                  "query": {"q": "{query.term}", "who": "{identity.id}",
                            "roles": "{identity.roles}", "n": "{order.count}"},
                  "headers": {"X-Tenant": "{header.X-Tenant}"}},
        "order": {"upstream": UP, "path": "/orders"},
    })
    call = plan.calls[0]
    values = scope(
        params={"id": "a b/c"}, query="term=caf%C3%A9+%26+more&term=second",
        headers={"x-tenant": "acme"},
        identity=Identity(id="u/1", roles=("admin", "ops")),
        results={"order": {"customer": {"id": "7?x"}, "count": 3}})
    path, query = call.render_target(values)
    assert path == "/a/a%20b%2Fc/7%3Fx"
    assert query == "q=caf%C3%A9%20%26%20more&who=u%2F1&roles=admin%2Cops&n=3"
    assert call.render_headers(values) == [("X-Tenant", "acme")]


def test_path_params_of_kind_path_keep_their_slashes() -> None:
    plan = plan_for({"file": {"upstream": UP, "path": "/store/{rest}"}},
                    path="/files/{rest:path}")
    assert plan.calls[0].render_target(scope({"rest": "a/b c.txt"})) == (
        "/store/a/b%20c.txt", "")


def test_a_query_written_in_the_path_is_kept_and_extended() -> None:
    plan = plan_for({"p": {"upstream": UP, "path": "/p?fixed=1&id={id}",
                           "query": {"more": "x y"}}})
    assert plan.calls[0].render_target(scope({"id": "a&b"})) == (
        "/p", "fixed=1&id=a%26b&more=x%20y")


def test_list_indexes_and_missing_values() -> None:
    plan = plan_for({
        "items": {"upstream": UP, "path": "/i/{orders.0.id}"},
        "orders": {"upstream": UP},
    })
    call = plan.calls[0]
    assert call.render_target(scope(results={"orders": [{"id": 5}]}))[0] == "/i/5"
    for results in ({"orders": []}, {"orders": {"id": 5}}, {}, {"orders": [{"id": None}]},
                    {"orders": [{"id": {"nested": 1}}]}):
        with pytest.raises(Missing) as caught:
            call.render_target(scope(results=results))
        assert caught.value.placeholder == "orders.0.id"


def test_missing_request_values_fail_the_call() -> None:
    plan = plan_for({"c": {"upstream": UP, "path": "/c",
                           "query": {"a": "{query.a}"},
                           "headers": {"X-Who": "{identity.id}", "X-H": "{header.X-In}"}}})
    call = plan.calls[0]
    with pytest.raises(Missing):
        call.render_target(scope())
    assert call.render_target(scope(query="a="))[1] == "a="  # present, empty
    with pytest.raises(Missing):
        call.render_headers(scope())  # no identity
    with pytest.raises(Missing):
        call.render_headers(scope(identity=Identity(id="x"), headers={}))
    with pytest.raises(Missing, match="control characters"):
        call.render_headers(scope(identity=Identity(id="x\r\nInjected: 1"),
                                  headers={"X-In": "v"}))


def test_body_templates_keep_json_types() -> None:
    plan = plan_for({
        "order": {"upstream": UP},
        "quote": {"upstream": UP, "method": "POST", "path": "/quote",
                  "body": {"items": "{order.items}", "note": "order {id} of {order.user}",
                           "fixed": [1, True, None], "user": "{order.user}"}},
        "static": {"upstream": UP, "method": "post", "body": {"a": 1}},
    })
    by_name = {call.name: call for call in plan.calls}
    quote = by_name["quote"]
    assert quote.method == "POST"
    assert ("Content-Type", "application/json") in quote.render_headers(scope())
    assert quote.body is not None
    rendered = quote.body.render(scope({"id": "9"}, results={
        "order": {"items": [{"sku": "a"}], "user": 7}}))
    assert rendered == (b'{"items":[{"sku":"a"}],"note":"order 9 of 7",'
                        b'"fixed":[1,true,null],"user":7}')
    static = by_name["static"].body
    assert static is not None and static.constant == b'{"a":1}'


# ---------------------------------------------------------------------------
# The plan: needs, stages, configuration errors


def test_needs_dependents_and_stages_come_from_placeholders() -> None:
    plan = plan_for({
        "order": {"upstream": UP, "path": "/orders/{id}"},
        "customer": {"upstream": UP, "path": "/users/{order.userId}"},
        "items": {"upstream": UP, "path": "/products", "query": {"orderId": "{id}"}},
        "reviews": {"upstream": UP, "path": "/r",
                    "headers": {"X-Items": "{items.0.id}", "X-C": "{customer.id}"}},
    })
    by_name = {call.name: call for call in plan.calls}
    assert [c.name for c in plan.roots] == ["order", "items"]
    assert by_name["reviews"].needs == ("customer", "items")
    assert [c.name for c in by_name["order"].dependents] == ["customer"]
    assert [[c.name for c in stage] for stage in plan.stages] == [
        ["order", "items"], ["customer"], ["reviews"]]


def test_cycles_are_configuration_errors_with_the_key_path() -> None:
    errors = config_errors({
        "a": {"upstream": UP, "path": "/a/{b.x}"},
        "b": {"upstream": UP, "path": "/b", "query": {"q": "{c.y}"}},
        "c": {"upstream": UP, "path": "/c", "headers": {"X-A": "{a.z}"}},
        "selfish": {"upstream": UP, "method": "POST", "body": {"k": "{selfish.v}"}},
    })
    assert errors == [
        "routes[1].aggregate.calls.c.headers.X-A: dependency cycle: a -> b -> c -> a "
        "(each call waits for the next)",
        "routes[1].aggregate.calls.selfish.body: call 'selfish' reads its own result",
    ]


def test_unknown_names_are_configuration_errors_with_suggestions() -> None:
    errors = config_errors({
        "order": {"upstream": UP, "path": "/orders/{ib}"},
        "customer": {"upstream": UP, "path": "/users/{ordr.userId}"},
        "items": {"upstream": UP, "query": {"x": "{order}", "y": "{querry.z}"}},
        "query": {"upstream": UP},
        "bad": {"upstream": UP, "method": "GETT", "path": "no-slash", "fields": ["a..b"],
                "body": {"x": 1}, "headers": {"X-Ok": "{header.}"}},
    })
    assert errors == [
        "routes[1].aggregate.calls.order.path: unknown placeholder {ib}: not a path "
        "parameter; did you mean 'id'?",
        "routes[1].aggregate.calls.customer.path: unknown call 'ordr' in {ordr.userId}; "
        "did you mean 'order'?",
        "routes[1].aggregate.calls.items.query.x: unknown placeholder {order}: not a path "
        "parameter; use {order.FIELD} for a field of call 'order'",
        "routes[1].aggregate.calls.items.query.y: unknown call 'querry' in {querry.z}; "
        "did you mean 'query'?",
        "routes[1].aggregate.calls.query: 'query' is reserved for {query.NAME} placeholders; "
        "name the call differently",
        "routes[1].aggregate.calls.bad.method: expected an HTTP method (GET, HEAD, POST, PUT, "
        "PATCH, DELETE, OPTIONS, TRACE, CONNECT), found 'GETT'; did you mean 'GET'?",
        "routes[1].aggregate.calls.bad.path: expected a path starting with '/', found "
        "'no-slash'",
        "routes[1].aggregate.calls.bad.headers.X-Ok: expected {header.NAME}, found {header.}",
        "routes[1].aggregate.calls.bad.body: a GETT call has no body (use POST, PUT, PATCH "
        "or DELETE)",
        "routes[1].aggregate.calls.bad.fields[0]: expected key paths like \"id\" or "
        "\"address.city\", found 'a..b'",
    ]


def test_pygate_check_reports_aggregate_errors(tmp_path: Any) -> None:
    path = tmp_path / "pygate.toml"
    path.write_text(
        '[[routes]]\nname = "agg"\npath = "/agg/{id}"\n'
        '[routes.aggregate.calls.customer]\nupstream = "http://127.0.0.1:9"\n'
        'path = "/users/{order.userId}"\n')
    done = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert done.exit_code == 1
    assert ("routes[0].aggregate.calls.customer.path: unknown call 'order' in "
            "{order.userId} (calls: customer)") in done.output
    assert "Traceback" not in done.output


# ---------------------------------------------------------------------------
# Projections


def test_fields_keep_keys_of_objects_and_of_each_list_element() -> None:
    tree = compile_fields(["id", "name"])
    assert project({"id": 1, "name": "a", "secret": "x"}, tree) == {"id": 1, "name": "a"}
    assert project([{"id": 1, "x": 0}, {"name": "b"}, 3], tree) == [
        {"id": 1}, {"name": "b"}, 3]
    assert project(None, tree) is None


def test_nested_fields_keep_the_nested_structure() -> None:
    tree = compile_fields(["id", "customer.address.city", "items.sku", "customer.name"])
    value = {"id": 1, "extra": 0,
             "customer": {"name": "Ann", "email": "e", "address": {"city": "Oslo", "zip": "1"}},
             "items": [{"sku": "a", "price": 1}, {"sku": "b"}]}
    assert project(value, tree) == {
        "id": 1,
        "customer": {"address": {"city": "Oslo"}, "name": "Ann"},
        "items": [{"sku": "a"}, {"sku": "b"}],
    }
    # a whole value named beside deeper paths is kept whole; null stays null
    assert project({"a": {"b": 1, "c": 2}}, compile_fields(["a.b", "a"])) == {
        "a": {"b": 1, "c": 2}}
    assert project({"customer": None}, tree) == {"customer": None}


def test_rename_keeps_key_order_in_objects_and_lists() -> None:
    assert list(rename({"a": 1, "b": 2, "c": 3}, {"b": "B"})) == ["a", "B", "c"]
    assert rename([{"name": "x"}, {"id": 1}], {"name": "title"}) == [{"title": "x"}, {"id": 1}]
    assert rename("text", {"a": "b"}) == "text"


# ---------------------------------------------------------------------------
# pygate explain


def test_explain_prints_the_plan_as_stages(tmp_path: Any) -> None:
    path = tmp_path / "pygate.toml"
    path.write_text("""
[upstreams.orders]
targets = ["http://127.0.0.1:3002"]
[upstreams.users]
targets = ["http://127.0.0.1:3001"]

[[routes]]
name = "order-details"
path = "/api/order-details/{id}"
[routes.aggregate]
timeout = "1500ms"
[routes.aggregate.calls.order]
upstream = "orders"
path = "/orders/{id}"
[routes.aggregate.calls.customer]
upstream = "users"
path = "/users/{order.userId}"
headers = { X-Tenant = "{header.X-Tenant}" }
fields = ["id", "address.city"]
timeout = "500ms"
[routes.aggregate.calls.items]
upstream = "http://127.0.0.1:3003"
path = "/products"
query = { orderId = "{id}", page = "{query.page}" }
optional = true
""")
    done = CliRunner().invoke(main, ["explain", "-c", str(path), "GET",
                                     "/api/order-details/a%20b?page=2", "-H", "X-Tenant: acme"])
    assert done.exit_code == 0, done.output
    tail = done.output.split("plugin chain, in order:\n  (none)\n", 1)[1]
    assert tail.splitlines() == [
        "aggregate: 3 calls, timeout 1.5s; a call starts as soon as the calls it reads are done",
        "  stage 1:",
        "    order: GET orders /orders/a%20b  [required]",
        "    items: GET http://127.0.0.1:3003 /products?orderId=a%20b&page=2  [optional]",
        "  stage 2:",
        "    customer: GET users /users/{order.userId}  [after order; required; timeout 500ms; "
        "fields id, address.city; X-Tenant: acme]",
    ]
