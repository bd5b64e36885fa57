"""Pure pieces: how parameter text becomes values, how paths and servers are matched."""

from __future__ import annotations

import pytest
from pygate_validate.openapi import PathItem, Paths, server_bases
from pygate_validate.params import Shape, coerce, parse_query

INTEGER = Shape(frozenset({"integer"}))
NUMBER = Shape(frozenset({"number"}))
BOOLEAN = Shape(frozenset({"boolean"}))
NULLABLE_INT = Shape(frozenset({"integer", "null"}))
STRING_OR_INT = Shape(frozenset({"string", "integer"}))


@pytest.mark.parametrize(("text", "shape", "value"), [
    ("7", INTEGER, 7),
    ("-7", INTEGER, -7),
    ("+7", INTEGER, "+7"),  # not JSON's way to write 7: left for the validator to refuse
    ("5_000", INTEGER, "5_000"),
    (" 5", INTEGER, " 5"),
    ("07", INTEGER, "07"),
    ("9" * 5000, INTEGER, "9" * 5000),  # more digits than Python converts: stays text
    ("1.5", INTEGER, "1.5"),
    ("1.5", NUMBER, 1.5),
    ("2", NUMBER, 2),
    ("1e3", NUMBER, 1000.0),
    ("1e999", NUMBER, "1e999"),
    ("NaN", NUMBER, "NaN"),
    ("true", BOOLEAN, True),
    ("false", BOOLEAN, False),
    ("True", BOOLEAN, "True"),
    ("", NULLABLE_INT, None),
    ("null", NULLABLE_INT, None),
    ("3", NULLABLE_INT, 3),
    ("3", STRING_OR_INT, "3"),  # a string is allowed: text stays text
    ("3", Shape(), "3"),
])
def test_coerce(text: str, shape: Shape, value: object) -> None:
    assert coerce(text, shape) == value
    assert type(coerce(text, shape)) is type(value)


def test_parse_query() -> None:
    assert parse_query("a=1&a=2&b=x+y%20z&c&d=&&e=%E2%82%AC") == {
        "a": ["1", "2"], "b": ["x y z"], "c": [""], "d": [""], "e": ["€"]}
    assert parse_query("a=%FF&%FE=1&b=%zz") == {"a": [None], "b": ["%zz"]}
    assert parse_query("") == {}


def test_server_bases() -> None:
    assert server_bases(None) == [""]
    assert server_bases([{"url": "/"}]) == [""]
    assert server_bases([{"url": "https://api.example.com/v1/"}, {"url": "/v2"},
                         {"url": "v3"}, {"url": "https://other.example.com/v1"}]) == [
        "/v1", "/v2", "/v3"]
    assert server_bases([{"url": "https://{host}/{version}/api",
                          "variables": {"host": {"default": "x.example.com"},
                                        "version": {"default": "v4", "enum": ["v4", "v5"]}}}]
                        ) == ["/v4/api"]


def test_paths_literal_first_then_more_literal_text() -> None:
    items = {template: PathItem(template) for template in (
        "/users/{id}", "/users/me", "/{kind}/{id}", "/users/{id}/posts", "/files/{name}.json")}
    paths = Paths(items)

    def found(path: str) -> tuple[str, dict[str, str]] | None:
        hit = paths.find(path)
        return (hit[0].template, hit[1]) if hit else None

    assert found("/users/me") == ("/users/me", {})
    assert found("/users/7") == ("/users/{id}", {"id": "7"})
    assert found("/teams/7") == ("/{kind}/{id}", {"kind": "teams", "id": "7"})
    assert found("/users/7/posts") == ("/users/{id}/posts", {"id": "7"})
    assert found("/files/a.b.json") == ("/files/{name}.json", {"name": "a.b"})
    assert found("/files/a.json/x") is None
    assert found("/users/") is None
    assert found("/users") is None
