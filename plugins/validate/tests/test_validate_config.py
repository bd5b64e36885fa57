"""Broken documents and settings are configuration errors with key paths: `pygate check`
and `pygate serve` name them and exit 1, without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from validate_docs import USER_SCHEMA_FILE, USERS_30, orders_31


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    return subprocess.run([sys.executable, "-m", "pygate", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


def check(tmp_path: Path, config: str) -> tuple[int, list[str]]:
    """``pygate check``: its exit code and its error lines (stripped)."""
    (tmp_path / "pygate.toml").write_text(config)
    done = run("check", "-c", "pygate.toml", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    return done.returncode, [line.strip() for line in output.splitlines()]


def route(index: int, settings: str) -> str:
    return f"""
[[routes]]
name = "r{index}"
path = "/r{index}"
upstream = "http://127.0.0.1:9"
plugins = {{ validate = {settings} }}
"""


def write(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_good_configuration_passes_check(tmp_path: Path) -> None:
    write(tmp_path, "users.yaml", USERS_30)
    write(tmp_path, "schemas/user.yaml", USER_SCHEMA_FILE)
    write(tmp_path, "api/orders.json", orders_31())
    write(tmp_path, "schemas/body.json", '{"type": "object"}')
    code, lines = check(tmp_path, '[plugins.validate]\nopenapi = "users.yaml"\n'
                        + route(0, '{ openapi = "api/orders.json", strict = true }')
                        + route(1, '{ body_schema = "schemas/body.json" }'))
    assert code == 0, lines


def test_a_broken_global_document_names_plugins_validate_openapi(tmp_path: Path) -> None:
    code, lines = check(tmp_path, '[plugins.validate]\nopenapi = "missing.yaml"\n' + route(
        0, "{ strict = true }"))
    assert code == 1
    missing = repr(str(tmp_path / "missing.yaml"))
    assert f"plugins.validate.openapi: file not found: {missing}" in lines
    # the route that merges its own setting over the table does not repeat the table's
    # problem: it is reported once, where it is written
    assert not any(line.startswith("routes[0].plugins.validate") for line in lines)
    assert lines[0] == "pygate.toml: 1 configuration error"


BAD_REF = USERS_30.replace("'#/components/schemas/NewUser'", "'#/components/schemas/Nope'")
MISSING_FILE_REF = USERS_30.replace("'schemas/user.yaml'", "'schemas/absent.yaml'")
NOT_OPENAPI = USERS_30.replace('info: {title: users, version: "1"}', "info: {title: users}")
BAD_PATTERN = USERS_30.replace("minLength: 1}", "pattern: '[a-'}")


@pytest.mark.parametrize(("files", "message"), [
    ({"api.yaml": "paths: [unclosed"},
     "is not valid YAML or JSON: expected ',' or ']', but got '<stream end>' (line 1, column 17)"),
    ({"api.json": '{"openapi": '}, "is not valid JSON: Expecting value (line 1, column 13)"),
    ({"api.yaml": "- just\n- a list\n"},
     "is not an OpenAPI document (expected a mapping with openapi, info and paths)"),
    ({"api.yaml": 'swagger: "2.0"\ninfo: {title: t, version: "1"}\npaths: {}\n'},
     "is a Swagger 2.0 document; convert it to OpenAPI 3.0 or 3.1"),
    ({"api.yaml": 'openapi: 3.2.0\ninfo: {title: t, version: "1"}\npaths: {}\n'},
     "is not an OpenAPI 3.0 or 3.1 document (its openapi field is '3.2.0'; expected "
     '"3.0.x" or "3.1.x")'),
    ({"api.yaml": NOT_OPENAPI, "schemas/user.yaml": USER_SCHEMA_FILE},
     "is not a valid OpenAPI document: 'version' is a required property (at /info)"),
    ({"api.yaml": BAD_REF, "schemas/user.yaml": USER_SCHEMA_FILE},
     "$ref '#/components/schemas/Nope' at /paths/~1users/post/requestBody/content/"
     "application~1json/schema/$ref in {api} cannot be resolved: nothing is there"),
    ({"api.yaml": MISSING_FILE_REF},
     "$ref 'schemas/absent.yaml' at /paths/~1users~1{{id}}/put/requestBody/content/"
     "application~1json/schema/$ref in {api}: file not found: {absent}"),
    ({"api.yaml": BAD_PATTERN, "schemas/user.yaml": USER_SCHEMA_FILE},
     "is not a valid OpenAPI document: '[a-' is not a 'regex' (at /properties/name/pattern)"),
    ({"api.yaml": USERS_30, "schemas/user.yaml": "type: string\npattern: '(x'\n"},
     "invalid regular expression '(x' at /pattern in {user}: missing ), unterminated "
     "subpattern at position 0"),
    ({"api.yaml": "openapi: 3.0.3\n\xff"}, "is not UTF-8 text"),
])
def test_a_broken_document_is_a_config_error(tmp_path: Path, files: dict[str, str],
                                             message: str) -> None:
    for name, text in files.items():
        if "\xff" in text:
            (tmp_path / name).write_bytes(text.encode("latin-1"))
        else:
            write(tmp_path, name, text)
    doc = next(iter(files))
    config = route(0, '{ body_schema = "body.json" }') + route(1, f'{{ openapi = "{doc}" }}')
    write(tmp_path, "body.json", "{}")
    code, lines = check(tmp_path, config)
    assert code == 1
    api = repr(str(tmp_path / doc))
    absent = repr(str(tmp_path / "schemas" / "absent.yaml"))
    user = repr(str(tmp_path / "schemas" / "user.yaml"))
    expected = message.format(api=api, absent=absent, user=user)
    if not expected.startswith("$ref") and not expected.startswith("invalid"):
        expected = f"{api} {expected}"
    assert f"routes[1].plugins.validate.openapi: {expected}" in lines, lines


@pytest.mark.parametrize(("settings", "where", "message"), [
    ('{ body_schema = "schema.json" }', "body_schema",
     "{path} is not a valid JSON Schema: 'nope' is not valid under any of the given schemas "
     "(at /type)"),
    ('{ query_schema = "missing.json" }', "query_schema", "file not found: {missing}"),
    ("{ strict = true }", "", "set openapi = \"openapi.yaml\", or body_schema / query_schema "
                              "(JSON Schema files)"),
    ('{ strict = true, body_schema = "ok.json" }', "",
     "strict needs an OpenAPI document (openapi = ...): without one no operation is described"),
    ('{ openapi = "ok.json", base_path = "api" }', "base_path",
     "expected a URL path like \"/api/users\", found 'api'"),
    ('{ openapi = "ok.json", stict = true }', "stict", "unknown key; did you mean 'strict'?"),
    ('{ body_schema = "ref.json" }', "body_schema",
     "$ref 'other.json#/nope' at /properties/a/$ref in {ref} cannot be resolved: "
     "nothing is there"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, settings: str, where: str,
                                        message: str) -> None:
    write(tmp_path, "schema.json", '{"type": "nope"}')
    write(tmp_path, "ok.json", json.dumps({"type": "object"}))
    write(tmp_path, "ref.json", '{"properties": {"a": {"$ref": "other.json#/nope"}}}')
    write(tmp_path, "other.json", "{}")
    code, lines = check(tmp_path, route(0, settings))
    assert code == 1
    key = "routes[0].plugins.validate" + (f".{where}" if where else "")
    expected = message.format(path=repr(str(tmp_path / "schema.json")),
                              missing=repr(str(tmp_path / "missing.json")),
                              ref=repr(str(tmp_path / "ref.json")))
    assert f"{key}: {expected}" in lines, lines


def test_serve_refuses_a_broken_document_before_listening(tmp_path: Path) -> None:
    write(tmp_path, "api.yaml", "openapi: 3.1.0\npaths: {}\n")
    write(tmp_path, "pygate.toml", '[plugins.validate]\nopenapi = "api.yaml"\n' + route(0, "{}"))
    done = run("serve", "-c", "pygate.toml", "--listen", "127.0.0.1:0", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in output
    assert (f"plugins.validate.openapi: {str(tmp_path / 'api.yaml')!r} is not a valid OpenAPI "
            "document: 'info' is a required property") in output
