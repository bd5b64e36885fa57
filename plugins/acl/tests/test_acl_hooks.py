"""acl through an in-process gateway (pygate.testing), with identities from key-auth or from a
tiny in-test authenticate plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pygate_acl
import pygate_key_auth
import pytest
from aiohttp import web

from pygate.plugin import Identity, hookimpl
from pygate.testing import start_gateway

pytest_plugins = ["pygate.testing"]


def _test_auth() -> types.ModuleType:
    """Trusts ``X-Test-User`` / ``X-Test-Roles`` (comma-separated): for tests only."""
    module = types.ModuleType("test-auth")
    module.PRIORITY = 2000  # type: ignore[attr-defined]

    @hookimpl
    def authenticate(request: web.BaseRequest) -> Identity | None:
        user = request.headers.get("X-Test-User")
        if user is None:
            return None
        roles = tuple(r for r in request.headers.get("X-Test-Roles", "").split(",") if r)
        return Identity(id=user, roles=roles, source="test-auth")

    module.authenticate = authenticate  # type: ignore[attr-defined]
    return module


PLUGINS = {"acl": pygate_acl, "key-auth": pygate_key_auth, "test-auth": _test_auth()}


def gateway_config(upstream: str, acl: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {"plugins": {"acl": acl, "test-auth": {}},
            "routes": [{"name": "r", "path": "/", "upstream": upstream, **route}]}


def user(name: str, *roles: str) -> dict[str, str]:
    return {"X-Test-User": name, "X-Test-Roles": ",".join(roles)}


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    entry = listed["acl"]
    assert entry["distribution"] == "pygate-acl"
    assert entry["version"] == "0.1.0"
    assert entry["priority"] == 950
    assert {"admit", "config_schema"} <= set(entry["hooks"])


async def test_allow_by_role(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url, {"allow": ["admin"]}),
                                   plugins=PLUGINS)
    assert (await gateway.request("GET", "/", headers=user("ann", "staff", "admin")))[0] == 200
    assert len(upstream.requests) == 1
    status, headers, body = await gateway.request("GET", "/", headers=user("bob", "staff"))
    assert status == 403
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == "this caller is not on the route's access list"
    assert body["route"] == "r"
    assert "admin" not in body["detail"]  # the list itself is not disclosed
    assert len(upstream.requests) == 1


async def test_allow_list_refuses_anonymous_callers_with_403(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url, {"allow": ["admin"]}),
                                   plugins=PLUGINS)
    status, _, body = await gateway.request("GET", "/")
    assert status == 403
    assert body["detail"] == "this route requires an authenticated caller on its access list"
    assert upstream.requests == []


async def test_allow_and_deny_by_consumer_with_key_auth(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {
            "key-auth": {"consumers": {"alice": "alice-key", "bob": "bob-key",
                                       "carol": {"keys": ["carol-key"], "roles": ["ops"]}},
                         "optional": True},
            "acl": {"allow": ["alice", "ops"], "deny": ["bob"]}},
         "routes": [{"name": "r", "path": "/", "upstream": upstream.url}]},
        plugins=PLUGINS)

    async def status_for(key: str | None) -> int:
        headers = {"X-API-Key": key} if key else {}
        return (await gateway.request("GET", "/", headers=headers))[0]

    assert await status_for("alice-key") == 200  # consumer name
    assert await status_for("carol-key") == 200  # role from key-auth
    assert await status_for("bob-key") == 403
    assert await status_for(None) == 403  # anonymous, with an allow list
    assert len(upstream.requests) == 2


async def test_deny_wins_over_allow(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        gateway_config(upstream.url, {"allow": ["admin"], "deny": ["banned", "mallory"]}),
        plugins=PLUGINS)
    status, _, body = await gateway.request("GET", "/", headers=user("eve", "admin", "banned"))
    assert status == 403
    assert body["detail"] == "access denied for this caller"
    status, _, _ = await gateway.request("GET", "/", headers=user("mallory", "admin"))
    assert status == 403
    assert upstream.requests == []


async def test_deny_only_lets_everyone_else_through(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url, {"deny": ["banned-user"]}),
                                   plugins=PLUGINS)
    assert (await gateway.request("GET", "/"))[0] == 200
    assert (await gateway.request("GET", "/", headers=user("ann")))[0] == 200
    assert (await gateway.request("GET", "/", headers=user("banned-user")))[0] == 403
    assert (await gateway.request("GET", "/", headers=user("x", "banned-user")))[0] == 403
    assert len(upstream.requests) == 2


async def test_qualified_entries_match_one_field(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(gateway_config(upstream.url, {"allow": ["role:root"],
                                                                 "deny": ["id:admin"]}),
                                   plugins=PLUGINS)
    assert (await gateway.request("GET", "/", headers=user("root")))[0] == 403
    assert (await gateway.request("GET", "/", headers=user("ann", "root")))[0] == 200
    assert (await gateway.request("GET", "/", headers=user("x", "admin", "root")))[0] == 200
    assert (await gateway.request("GET", "/", headers=user("admin", "root")))[0] == 403


async def test_per_route_override_and_off_switch(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"acl": {"allow": ["staff"]}, "test-auth": {}},
         "routes": [
             {"name": "admin", "path": "/admin", "upstream": upstream.url,
              "plugins": {"acl": {"allow": ["admin"]}}},
             {"name": "open", "path": "/open", "upstream": upstream.url,
              "plugins": {"acl": False}},
             {"name": "staff", "path": "/", "upstream": upstream.url}]},
        plugins=PLUGINS)
    staff = user("ann", "staff")
    assert (await gateway.request("GET", "/x", headers=staff))[0] == 200
    assert (await gateway.request("GET", "/admin", headers=staff))[0] == 403
    assert (await gateway.request("GET", "/admin", headers=user("root", "admin")))[0] == 200
    assert (await gateway.request("GET", "/open"))[0] == 200


async def test_config_errors_name_their_key_path() -> None:
    async def errors(acl: dict[str, Any]) -> str:
        # the gateway refuses to start: pygate's ConfigError lists every problem
        with pytest.raises(Exception, match="configuration error") as caught:
            await start_gateway(gateway_config("http://127.0.0.1:9", acl), PLUGINS)
        return str(caught.value)

    assert "plugins.acl: expected allow, deny or both" in await errors({})
    assert "plugins.acl.allow[1]: expected a role" in await errors({"allow": ["a", " "]})
    assert "plugins.acl.deny[0]: expected a name after 'role:'" in await errors({"deny": ["role:"]})
    assert "plugins.acl.alow: unknown key; did you mean 'allow'?" in await errors(
        {"alow": ["a"], "deny": ["b"]})
    assert "plugins.acl.allow: " in await errors({"allow": "admin"})
