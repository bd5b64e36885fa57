"""Configuration errors, the listing by ``pygate plugins``, and the pure parts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pygate_oauth2_introspection
import pytest
from pygate_oauth2_introspection.introspect import (
    IdpUnavailable,
    InactiveToken,
    Introspected,
    ResultCache,
    check,
    digest,
)

from pygate.plugin import Identity
from pygate.testing import start_gateway

UPSTREAM = "http://127.0.0.1:9"
GOOD = {"introspection_url": "https://idp.example/introspect", "client_id": "pygate",
        "client_secret": "very-secret"}


PLUGINS = {"oauth2-introspection": pygate_oauth2_introspection}


def data(table: dict[str, Any]) -> dict[str, Any]:
    return {"plugins": {"oauth2-introspection": table},
            "routes": [{"name": "r", "path": "/", "upstream": UPSTREAM}]}


def errors(table: dict[str, Any]) -> str:
    """The gateway refuses to start: pygate's ConfigError, rendered with every problem."""
    with pytest.raises(Exception, match="configuration error") as caught:
        asyncio.run(start_gateway(data(table), PLUGINS))
    return str(caught.value)


@pytest.mark.parametrize("missing", ["introspection_url", "client_id", "client_secret"])
def test_required_keys(missing):
    table = {k: v for k, v in GOOD.items() if k != missing}
    assert f"plugins.oauth2-introspection.{missing}: required key is missing" in errors(table)


@pytest.mark.parametrize(("extra", "expected"), [
    ({"introspection_url": "idp/introspect"}, "introspection_url: expected an http(s) URL"),
    ({"ttl": "forever"}, "ttl: expected a duration"),
    ({"timeout": "0s"}, "timeout: expected a duration above zero"),
    ({"tll": "1m"}, "tll: unknown key; did you mean 'ttl'?"),
    ({"cache_size": -1}, "cache_size:"),
])
def test_bad_settings(extra, expected):
    assert f"plugins.oauth2-introspection.{expected}" in errors({**GOOD, **extra})


async def test_defaults_and_secret_hidden():
    gateway = await start_gateway(data(GOOD), PLUGINS)
    try:
        (config,) = gateway.running.gateway.facade.configs("oauth2-introspection")
    finally:
        await gateway.close()
    assert (config.ttl, config.timeout, config.token_type_hint) == (60.0, 2.0, "access_token")
    shown = json.dumps(config.model_dump(mode="json"))  # what `pygate explain` shows
    assert "very-secret" not in shown


def test_listed_by_pygate_plugins():
    command = Path(sys.executable).parent / "pygate"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    entry = {e["name"]: e for e in json.loads(done.stdout)}["oauth2-introspection"]
    assert "error" not in entry, entry
    assert entry["distribution"] == "pygate-oauth2-introspection"
    assert entry["priority"] == 1700
    assert {"authenticate", "config_schema", "startup"} <= set(entry["hooks"])


def test_check_judges_responses():
    now = 1000.0
    assert check({"active": True, "sub": "a", "exp": 1001}, now).expires == 1001.0
    for response, description in [
        ({"active": False}, "the token is not active"),
        ({"active": "true", "sub": "a"}, "the token is not active"),
        ({"sub": "a"}, "the token is not active"),
        ({"active": True, "sub": "a", "exp": 1000}, "the token has expired"),
        ({"active": True, "sub": "a", "nbf": 1001}, "the token is not valid yet"),
        ({"active": True}, "the token has no subject (sub, username or client_id)"),
    ]:
        with pytest.raises(InactiveToken) as caught:
            check(response, now)
        assert caught.value.description == description
    with pytest.raises(IdpUnavailable):
        check([1, 2], now)


def test_result_cache_until_exp_or_ttl_whichever_first():
    now = [1000.0]
    cache = ResultCache(size=10, ttl=60.0, clock=lambda: now[0])
    soon = Introspected(identity=Identity(id="a"), claims={}, expires=1010.0)
    later = Introspected(identity=Identity(id="b"), claims={}, expires=5000.0)
    cache.put("soon", soon)
    cache.put("later", later)
    now[0] = 1009.0
    assert cache.get("soon") is soon and cache.get("later") is later
    now[0] = 1010.0  # exp reached first
    assert cache.get("soon") is None
    now[0] = 1061.0  # ttl reached first
    assert cache.get("later") is None
    assert len(ResultCache(size=0, ttl=60.0)) == 0


def test_result_cache_is_bounded():
    cache = ResultCache(size=3, ttl=60.0)
    for name in "abcdef":
        cache.put(name, Introspected(identity=Identity(id=name), claims={}, expires=None))
    assert len(cache) == 3


def test_tokens_are_kept_as_digests():
    assert digest("tok") != "tok" and len(digest("tok")) == 64
