"""The pure parts: dotted paths, the four edits, and JSON read and written faithfully."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from pygate_transform.body import MISSING, Operations, keep_tree, parse_path
from pygate_transform.codec import (
    NotJson,
    decode,
    encode,
    is_encoded,
    is_json,
    utf8_content_type,
)
from pygate_transform.config import TransformConfig


def edited(document: Any, **edits: Any) -> Any:
    """``document`` after the ``edits`` (a ``request`` table), through a real config."""
    values = edits.pop("values", None)
    config = TransformConfig.model_validate({"request": edits})
    data = json.loads(json.dumps(document))
    operations = config.request.operations
    if values is None:
        values = [template.source for template in config.request.templates]
    operations.apply(data, values)
    return data


# ---------------------------------------------------------------------------
# Paths and edits


def test_paths_are_dotted_key_names() -> None:
    assert parse_path("owner.name") == ("owner", "name")
    assert parse_path("a b.c-d") == ("a b", "c-d")
    for bad in ("", ".a", "a.", "a..b"):
        with pytest.raises(ValueError, match="dotted path"):
            parse_path(bad)


def test_keep_tree_keeps_a_whole_value_over_a_part_of_it() -> None:
    assert keep_tree([]) is None
    assert keep_tree([("a", "b"), ("a",), ("c", "d")]) == {"a": None, "c": {"d": None}}
    assert keep_tree([("a",), ("a", "b")]) == {"a": None}


def test_remove_reaches_into_objects_and_every_list_element() -> None:
    document = {"internal": 1, "owner": {"ssn": "1", "name": "A"},
                "items": [{"ssn": 2, "n": 1}, {"n": 2}, 3, [{"ssn": 4}]]}
    assert edited(document, remove=["internal", "owner.ssn", "items.ssn", "absent.x"]) == {
        "owner": {"name": "A"}, "items": [{"n": 1}, {"n": 2}, 3, [{}]]}
    assert edited([{"a": 1, "b": 2}, {"a": 3}], remove=["a"]) == [{"b": 2}, {}]


def test_rename_keeps_the_position_and_replaces_a_key_of_the_new_name() -> None:
    document = {"first": 1, "user_name": "ann", "userName": "old", "last": 2}
    out = edited(document, rename={"user_name": "userName"})
    assert list(out.items()) == [("first", 1), ("userName", "ann"), ("last", 2)]
    assert edited({"o": [{"a": 1}, {"b": 2}]}, rename={"o.a": "o.z"}) == {
        "o": [{"z": 1}, {"b": 2}]}
    assert edited({"x": 1}, rename={"missing": "y"}) == {"x": 1}


def test_keep_projects_objects_and_list_elements() -> None:
    document = {"id": 1, "secret": 2, "owner": {"name": "A", "ssn": "1"},
                "items": [{"id": 1, "cost": 3}, {"id": 2}], "note": "n"}
    assert edited(document, keep=["id", "owner.name", "items.id"]) == {
        "id": 1, "owner": {"name": "A"}, "items": [{"id": 1}, {"id": 2}]}
    assert edited(document, keep=[]) == document


def test_set_creates_objects_on_the_way_and_leaves_scalars_alone() -> None:
    assert edited({"a": 1}, set={"meta.source": "gateway", "a": 2}) == {
        "a": 2, "meta": {"source": "gateway"}}
    assert edited({"meta": "text"}, set={"meta.source": "gateway"}) == {"meta": "text"}
    assert edited([{"x": 1}, 5], set={"y": True}) == [{"x": 1, "y": True}, 5]
    assert edited({"t": {"a": 1}}, set={"t": {"b": [1, {"c": None}]}}) == {
        "t": {"b": [1, {"c": None}]}}


def test_a_set_value_the_request_lacks_removes_the_key() -> None:
    document = {"userId": "root", "n": {"userId": "root"}}
    assert edited(document, set={"userId": "{identity.id}", "n.userId": "x"},
                  values=[MISSING, MISSING]) == {"n": {}}


def test_edits_run_keep_remove_rename_then_set() -> None:
    document = {"userName": "al", "password": "x", "userId": "root", "drop": 1}
    out = edited(document, keep=["userName", "password", "userId"], remove=["password"],
                 rename={"userName": "user_name"}, set={"user_name": "forced"})
    assert out == {"user_name": "forced", "userId": "root"}


def test_apply_says_whether_anything_changed() -> None:
    config = TransformConfig.model_validate({"request": {
        "keep": ["a", "b"], "remove": ["x"], "rename": {"old": "new"}, "set": {"b": 1}}})
    operations = config.request.operations
    assert not operations.apply({"a": 1, "b": 1}, [1])
    assert not operations.apply([{"a": [1], "b": 1}, 3], [1])
    for document in ({"a": 1, "b": 2}, {"a": 1}, {"a": 1, "c": 1}):
        assert operations.apply(document, [1]), document
    assert operations.apply({"b": 1.0}, [1])  # 1.0 is written differently from 1
    assert TransformConfig.model_validate({"request": {"remove": ["x"]}}).request \
        .operations.apply({"x": None}, [])
    assert TransformConfig.model_validate({"request": {"rename": {"x": "x"}}}).request \
        .operations.apply({"x": 1}, [])
    assert not TransformConfig.model_validate({"request": {"set": {"x": 1}}}).request \
        .operations.apply({}, [MISSING])


def test_deep_lists_are_walked_without_recursion() -> None:
    document: Any = {"a": 1}
    for _ in range(50_000):
        document = [document]
    operations = Operations(remove=(("a",),))
    operations.apply(document, [])
    inner = document
    for _ in range(50_000):
        inner = inner[0]
    assert inner == {}


# ---------------------------------------------------------------------------
# Reading and writing JSON


def test_numbers_keep_their_text() -> None:
    raw = b'{"price":12.30,"big":123456789012345678901234567890.123,"tiny":1e-7,"huge":1e400,' \
          b'"int":12345678901234567890123,"neg":-0.0}'
    assert encode(decode(raw)) == raw.replace(b"1e-7", b"1E-7").replace(b"1e400", b"1E+400")


def test_text_is_utf8_and_lone_surrogates_stay_escaped() -> None:
    assert encode(decode('{"n":"Zoë \\u00e9"}'.encode())) == '{"n":"Zoë é"}'.encode()
    assert encode(decode(b'{"s":"\\udc80"}')) == b'{"s":"\\udc80"}'
    assert encode(decode('{"n":"é"}'.encode("utf-16"))) == '{"n":"é"}'.encode()


@pytest.mark.parametrize("raw", [
    b'{"a": 1', b"\xff\xfe\xfd{", b'{"a": NaN}', b"[Infinity]", b"", b"[" * 100_000,
    b"1" * 5000, b'{"a": 1} trailing',
])
def test_what_cannot_be_read_is_not_json(raw: bytes) -> None:
    with pytest.raises(NotJson):
        decode(raw)


def test_a_value_json_cannot_hold_is_not_json() -> None:
    with pytest.raises(NotJson):
        encode({"x": float("inf")})
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(NotJson):
        encode(nested)


def test_media_types() -> None:
    assert is_json("application/json")
    assert is_json("Application/JSON; charset=utf-8")
    assert is_json("application/problem+json")
    assert is_json("application/vnd.api+json")
    assert not is_json("text/json+plain")
    assert not is_json("text/plain")
    assert not is_json(None)
    assert is_encoded({"Content-Encoding": "gzip"})
    assert not is_encoded({"Content-Encoding": "identity"})
    assert not is_encoded({})
    assert utf8_content_type("application/json") == "application/json"
    assert utf8_content_type("application/json; charset=UTF-8") == \
        "application/json; charset=UTF-8"
    assert utf8_content_type("application/json; charset=utf-16; v=2") == \
        "application/json; v=2; charset=utf-8"


# ---------------------------------------------------------------------------
# Configuration


def issues(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        TransformConfig.model_validate(raw)
    return str(caught.value)


def test_config_errors_say_what_was_expected() -> None:
    assert "dotted path" in issues({"request": {"remove": ["a..b"]}})
    assert "did you mean 'identity'" in issues({"request": {"set": {"x": "{identty.id}"}}})
    assert "unclosed" in issues({"response": {"set": {"x": "{identity.id"}}})
    assert "keeps the key in its object" in issues({"response": {"rename": {"a.b": "c.d"}}})
    assert "quote a dotted path" in issues({"response": {"rename": {"a": {"b": "c"}}}})
    assert "finite" in issues({"request": {"set": {"x": float("nan")}}})
    assert "at least 1 byte" in issues({"max_body": 0})
    assert "Extra inputs" in issues({"request": {"sett": {}}})


def test_config_defaults_and_parsed_edits() -> None:
    config = TransformConfig()
    assert config.max_body == 1024 * 1024
    assert config.request.operations.empty and config.response.operations.empty
    config = TransformConfig.model_validate(
        {"max_body": "2KB", "response": {"rename": {"owner.user": "owner.name"},
                                         "set": {"who": "{identity.id}", "v": 1}}})
    assert config.max_body == 2048
    assert config.response.operations.rename == ((("owner", "user"), "name"),)
    assert config.response.varies
    assert [t.dynamic for t in config.response.templates] == [True, False]
    assert config.model_dump(mode="json")["response"]["set"] == {"who": "{identity.id}",
                                                                  "v": 1}
