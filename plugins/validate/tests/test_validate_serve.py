"""End to end: the installed plugin in a real `pygate serve` process, a real upstream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from validate_docs import USER_SCHEMA_FILE, USERS_30, orders_31

from pygate.testing import free_port
from pygate.testing import serve_process as serve
from pygate.testing import stop_serve as stop

pytest_plugins = ["pygate.testing"]


def test_pygate_plugins_lists_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([sys.executable, "-m", "pygate", "plugins"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    found = [p for p in json.loads(done.stdout) if p["name"] == "validate"]
    assert len(found) == 1
    assert found[0]["distribution"].replace("_", "-") == "pygate-validate"
    assert {"admit", "config_schema"} <= set(found[0]["hooks"])
    assert found[0]["priority"] == 999


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
               ) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        raw = await response.read()
        body = json.loads(raw) if "json" in response.headers.get("Content-Type", "") else raw
        return response.status, body


async def test_serve_checks_requests_before_the_upstream(tmp_path: Path, fake_upstream) -> None:
    upstream = await fake_upstream()
    (tmp_path / "users.yaml").write_text(USERS_30)
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "user.yaml").write_text(USER_SCHEMA_FILE)
    (tmp_path / "orders.json").write_text(orders_31())
    (tmp_path / "schemas" / "signup.json").write_text(
        '{"type": "object", "required": ["email"], '
        '"properties": {"email": {"type": "string", "format": "email"}}}')
    config = tmp_path / "pygate.toml"
    config.write_text(f"""
[gateway]
max_body = "64KB"

[plugins.validate]
openapi = "users.yaml"

[[routes]]
name = "users"
path = "/api"
upstream = "{upstream.url}"

[[routes]]
name = "orders"
path = "/orders"
strip_path = false
upstream = "{upstream.url}"
plugins = {{ validate = {{ openapi = "orders.json", strict = true }} }}

[[routes]]
name = "signup"
path = "/signup"
upstream = "{upstream.url}"
plugins = {{ validate = {{ body_schema = "schemas/signup.json", openapi = "orders.json" }} }}
""")
    port = free_port()
    proc = await serve(config, port, tmp_path / "gw.log")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            body = b'{"email": "ann@example.com",   "name": "Ann", "nick": null}'
            status, _ = await call(session, "POST", base + "/api/users", data=body,
                                   headers={"Content-Type": "application/json"})
            assert status == 200
            assert upstream.requests[-1].body == body
            assert upstream.requests[-1].path == "/users"

            status, problem = await call(session, "GET", base + "/api/users/abc",
                                         headers={"X-Mode": "slow"})
            assert status == 400
            assert [(e["in"], e["pointer"]) for e in problem["errors"]] == [
                ("path", "/id"), ("header", "/X-Mode")]
            status, problem = await call(session, "GET", base + "/api/users")
            assert problem["errors"][0]["message"] == (
                "required query parameter 'limit' is missing")
            status, problem = await call(session, "POST", base + "/api/users", json={
                "name": 1, "email": "x", "id": "y", "born": "z"})
            assert status == 400
            assert [(e["pointer"], e["message"]) for e in problem["errors"]] == [
                ("/name", "1 is not of type 'string'"),
                ("/email", "'x' is not a valid email"),
                ("/id", "'y' is not a valid uuid"),
                ("/born", "'z' is not a valid date-time"),
            ]

            # strict on the orders route
            status, _ = await call(session, "GET", base + "/orders/x/y")
            assert status == 404
            status, _ = await call(session, "DELETE", base + "/orders")
            assert status == 405
            status, _ = await call(session, "POST", base + "/orders",
                                   json={"item": "a", "count": 1})
            assert status == 200

            # a route's body_schema over the document
            status, problem = await call(session, "POST", base + "/signup", json={"email": "x"})
            assert status == 400
            assert problem["errors"][0]["pointer"] == "/email"

            # a body past max_body: 413, whatever the plugin
            big = json.dumps({"name": "a", "email": "a@example.com", "pad": "x" * 70_000})
            status, problem = await call(session, "POST", base + "/api/users", data=big,
                                         headers={"Content-Type": "application/json"})
            assert status == 413
            assert problem["detail"] == "request body exceeds the gateway's max_body"
        assert [(r.method, r.path) for r in upstream.requests] == [
            ("POST", "/users"), ("POST", "/orders")]
    finally:
        code = await asyncio.to_thread(stop, proc)
    assert code == 0
    log = (tmp_path / "gw.log").read_text()
    assert "Traceback" not in log
