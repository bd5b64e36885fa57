"""key-auth through an in-process gateway (pygate.testing) against fake upstreams."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pygate_key_auth
import pytest

from pygate.plugin import Context, UpstreamRequest, hookimpl
from pygate.testing import start_gateway

pytest_plugins = ["pygate.testing"]


def _recorder() -> types.ModuleType:
    """A plugin that tells the upstream who the gateway thinks is calling."""
    module = types.ModuleType("who")
    module.PRIORITY = 1  # type: ignore[attr-defined]

    @hookimpl
    def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
        identity = ctx.identity
        upstream_request.headers["X-Test-Identity"] = json.dumps(
            None if identity is None else
            {"id": identity.id, "consumer": identity.consumer, "roles": list(identity.roles),
             "source": identity.source})

    module.transform_request = transform_request  # type: ignore[attr-defined]
    return module


PLUGINS = {"key-auth": pygate_key_auth, "who": _recorder()}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def config(upstream: str, **settings: Any) -> dict[str, Any]:
    settings.setdefault("consumers", {"alice": "alice-key",
                                      "bob": f"sha256:{sha256_hex('bob-key')}"})
    return {"plugins": {"key-auth": settings, "who": {}},
            "routes": [{"name": "r", "path": "/", "upstream": upstream}]}


def seen_identity(upstream: Any) -> Any:
    return json.loads(upstream.requests[-1].headers["X-Test-Identity"])


def config_errors(data: dict[str, Any]) -> str:
    """The gateway refuses to start: pygate's ConfigError, rendered with every problem."""
    with pytest.raises(Exception, match="configuration error") as caught:
        asyncio.run(start_gateway(data, PLUGINS))
    return str(caught.value)


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    entry = listed["key-auth"]
    assert entry["distribution"] == "pygate-key-auth"
    assert entry["version"] == "0.1.0"
    assert entry["priority"] == 1250
    assert {"authenticate", "transform_request", "config_schema"} <= set(entry["hooks"])


async def test_plain_key_in_header(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/x", headers={"X-API-Key": "alice-key"})
    assert status == 200
    assert seen_identity(upstream) == {"id": "alice", "consumer": "alice", "roles": [],
                                       "source": "key-auth"}


async def test_sha256_key(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/x", headers={"X-API-Key": "bob-key"})
    assert status == 200
    assert seen_identity(upstream)["consumer"] == "bob"
    # the digest itself is not a key
    status, _, _ = await gateway.request("GET", "/x",
                                         headers={"X-API-Key": f"sha256:{sha256_hex('bob-key')}"})
    assert status == 401


async def test_custom_header_name(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, header="X-Key"), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/", headers={"X-API-Key": "alice-key"})
    assert status == 401
    status, _, _ = await gateway.request("GET", "/", headers={"x-key": "alice-key"})
    assert status == 200


async def test_key_in_query_is_accepted_and_hidden_upstream(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, query="api_key"), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/items?page=2&api_key=bob-key&sort=name")
    assert status == 200
    assert seen_identity(upstream)["consumer"] == "bob"
    sent = upstream.requests[-1]
    assert sent.query == "page=2&sort=name"
    assert "bob-key" not in json.dumps(list(sent.headers.items()))


async def test_query_is_ignored_unless_configured(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/?api_key=alice-key")
    assert status == 401
    assert upstream.requests == []


async def test_header_is_hidden_from_the_upstream(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    await gateway.request("GET", "/", headers={"X-API-Key": "alice-key", "X-Other": "kept"})
    sent = upstream.requests[-1].headers
    assert "X-API-Key" not in sent
    assert sent["X-Other"] == "kept"


async def test_hide_credentials_false_forwards_the_key(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, query="api_key", hide_credentials=False),
                                   plugins=PLUGINS)
    await gateway.request("GET", "/?api_key=alice-key", headers={"X-API-Key": "alice-key"})
    sent = upstream.requests[-1]
    assert sent.headers["X-API-Key"] == "alice-key"
    assert sent.query == "api_key=alice-key"


async def test_missing_key_is_401_with_challenge(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    status, headers, body = await gateway.request("GET", "/x")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Key realm="pygate"'
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 401 and body["route"] == "r"
    assert "X-API-Key" in body["detail"]
    assert upstream.requests == []


@pytest.mark.parametrize("key", ["wrong", "ALICE-KEY", "alice-ke", "alice-key2"])
async def test_wrong_key_is_401_with_challenge(pygate_gateway, fake_upstream, key):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url), plugins=PLUGINS)
    status, headers, body = await gateway.request("GET", "/x", headers={"X-API-Key": key})
    assert status == 401, key
    assert headers["WWW-Authenticate"] == 'Key realm="pygate"'
    assert body["detail"] == "invalid API key"
    assert key not in json.dumps(body)
    assert upstream.requests == []


async def test_optional_lets_anonymous_through_but_not_a_wrong_key(pygate_gateway,
                                                                   fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, optional=True), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/")
    assert status == 200
    assert seen_identity(upstream) is None
    status, _, _ = await gateway.request("GET", "/", headers={"X-API-Key": "nope"})
    assert status == 401


async def test_keys_file_absolute(pygate_gateway, fake_upstream, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(f'carol = "carol-key"\ndave = "sha256:{sha256_hex("dave-key")}"\n')
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, keys_file=str(keys)), plugins=PLUGINS)
    for key, consumer in (("carol-key", "carol"), ("dave-key", "dave"), ("alice-key", "alice")):
        status, _, _ = await gateway.request("GET", "/", headers={"X-API-Key": key})
        assert status == 200
        assert seen_identity(upstream)["consumer"] == consumer


async def test_keys_file_relative_to_current_directory(pygate_gateway, fake_upstream, tmp_path,
                                                       monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "keys.toml").write_text(
        '[erin]\nkeys = ["old-key", "new-key"]\nroles = ["admin", "ops"]\n')
    monkeypatch.chdir(tmp_path)
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, consumers={}, keys_file="secrets/keys.toml"), plugins=PLUGINS)
    for key in ("old-key", "new-key"):
        status, _, _ = await gateway.request("GET", "/", headers={"X-API-Key": key})
        assert status == 200
        assert seen_identity(upstream) == {"id": "erin", "consumer": "erin",
                                           "roles": ["admin", "ops"], "source": "key-auth"}


async def test_per_route_settings(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"key-auth": {"consumers": {"alice": "alice-key"}}},
         "routes": [{"name": "open", "path": "/open", "upstream": upstream.url,
                     "plugins": {"key-auth": False}},
                    {"name": "soft", "path": "/soft", "upstream": upstream.url,
                     "plugins": {"key-auth": {"optional": True}}},
                    {"name": "closed", "path": "/closed", "upstream": upstream.url}]},
        plugins=PLUGINS)
    assert (await gateway.request("GET", "/open"))[0] == 200
    assert (await gateway.request("GET", "/soft"))[0] == 200
    assert (await gateway.request("GET", "/closed"))[0] == 401
    # with the plugin off, a key travels on untouched
    await gateway.request("GET", "/open", headers={"X-API-Key": "alice-key"})
    assert upstream.requests[-1].headers["X-API-Key"] == "alice-key"


async def test_plain_keys_are_never_displayed() -> None:
    gateway = await start_gateway(config("http://127.0.0.1:9"), PLUGINS)
    try:
        (settings,) = gateway.running.gateway.facade.configs("key-auth")
    finally:
        await gateway.close()
    shown = json.dumps(settings.model_dump(mode="json"))  # what `pygate explain` shows
    assert "alice-key" not in shown
    assert f"sha256:{sha256_hex('alice-key')}" in shown


def test_config_errors_name_their_key_path(tmp_path) -> None:
    text = config_errors(config("http://127.0.0.1:9",
                                consumers={"alice": "sha256:abc", "bob": ""}, heder="X"))
    assert "plugins.key-auth.consumers.alice.keys[0]: expected \"sha256:\"" in text
    assert "plugins.key-auth.consumers.bob.keys[0]: expected a non-empty key" in text
    assert "plugins.key-auth.heder: unknown key; did you mean 'header'?" in text

    text = config_errors(config("http://127.0.0.1:9", consumers={"a": "same", "b": "same"}))
    assert "plugins.key-auth: the same key is configured for consumers 'a' and 'b'" in text

    text = config_errors(config("http://127.0.0.1:9", consumers={}))
    assert "plugins.key-auth: no consumers" in text

    missing = tmp_path / "nope.toml"
    text = config_errors(config("http://127.0.0.1:9", keys_file=str(missing)))
    assert "plugins.key-auth.keys_file: file not found" in text

    broken = tmp_path / "broken.toml"
    broken.write_text('alice = 3\nbob = "sha256:12"\n')
    text = config_errors(config("http://127.0.0.1:9", keys_file=str(broken)))
    assert "plugins.key-auth.keys_file:" in text
    assert "alice:" in text and "bob.keys[0]:" in text

    clash = tmp_path / "clash.toml"
    clash.write_text('mallory = "alice-key"\n')
    text = config_errors(config("http://127.0.0.1:9", keys_file=str(clash)))
    assert "consumers 'alice' and 'mallory'" in text
