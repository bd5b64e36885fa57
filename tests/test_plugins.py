"""The plugin system through pygate.testing: chains, config, priorities, failures."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner

from pygate import Context, UpstreamRequest, hookimpl
from pygate.app import build_gateway
from pygate.cli import main
from pygate.config import ConfigError, load_data
from pygate.hookspecs import REQUEST_HOOKS

from . import example_plugin


def route(upstream: str, **extra: Any) -> dict[str, Any]:
    return {"name": "r", "path": "/", "upstream": upstream, **extra}


async def test_every_hook_runs_with_its_config(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    example_plugin.seen.clear()
    gateway = await pygate_gateway(
        {"plugins": {"stamp": {"value": "global"}},
         "routes": [route(upstream.url, plugins={"stamp": {"value": "per-route"}})]},
        plugins={"stamp": example_plugin},
    )
    status, headers, _ = await gateway.request("GET", "/x", headers={"X-Demo-User": "ann"})
    assert status == 200
    assert headers["X-Stamped"] == "per-route"
    sent = upstream.requests[-1]
    assert sent.headers["X-Stamp"] == "per-route"
    assert sent.headers["X-Stamp-User"] == "ann"
    for _ in range(50):
        if example_plugin.seen:
            break
        await asyncio.sleep(0.01)
    record = example_plugin.seen[-1]
    assert record["status"] == 200
    assert record["route"] == "r"
    assert record["request_id"] == headers["X-Request-ID"]


async def test_pre_route_answers_without_upstream(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, methods=["GET"],
                          plugins={"stamp": {"answer_path": "/pre"}})]},
        plugins={"stamp": example_plugin},
    )
    # pre_route runs before 405 is decided: a DELETE still reaches it
    status, headers, body = await gateway.request("DELETE", "/pre")
    assert (status, body) == (200, b"answered by stamp")
    assert headers["X-Stamped"] == "yes"
    assert upstream.requests == []


async def test_refusal_is_a_problem_document(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway({"plugins": {"stamp": {}}, "routes": [route(upstream.url)]},
                                   plugins={"stamp": example_plugin})
    status, headers, body = await gateway.request("GET", "/", headers={"X-Demo-Block": "1"})
    assert status == 403
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == "blocked by stamp"
    assert body["route"] == "r"
    assert headers["X-Stamped"] == "yes"  # post_response runs on refusals too
    assert upstream.requests == []


async def test_route_can_turn_a_global_plugin_off(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"stamp": {}},
         "routes": [route(upstream.url, name="on", path="/on"),
                    route(upstream.url, name="off", path="/off", plugins={"stamp": False})]},
        plugins={"stamp": example_plugin},
    )
    _, on_headers, _ = await gateway.request("GET", "/on")
    _, off_headers, _ = await gateway.request("GET", "/off")
    assert on_headers["X-Stamped"] == "yes"
    assert "X-Stamped" not in off_headers
    assert "X-Stamp" not in upstream.requests[-1].headers


def _plugin(name: str, priority: int, order: list[str], fail: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.PRIORITY = priority  # type: ignore[attr-defined]

    @hookimpl
    def transform_request(upstream_request: UpstreamRequest) -> None:
        order.append(f"request:{name}")
        if fail:
            raise RuntimeError("boom")

    @hookimpl
    def post_response(ctx: Context) -> None:
        order.append(f"response:{name}")

    module.transform_request = transform_request  # type: ignore[attr-defined]
    module.post_response = post_response  # type: ignore[attr-defined]
    return module


async def test_priority_orders_request_and_response_sides(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    order: list[str] = []
    gateway = await pygate_gateway(
        {"plugins": {"low": {}, "high": {}, "mid": {}}, "routes": [route(upstream.url)]},
        plugins={"low": _plugin("low", 1, order), "high": _plugin("high", 900, order),
                 "mid": _plugin("mid", 50, order)},
    )
    status, _, _ = await gateway.request("GET", "/")
    assert status == 200
    assert order == ["request:high", "request:mid", "request:low",
                     "response:low", "response:mid", "response:high"]


async def test_plugin_that_raises_gives_500_and_gateway_keeps_serving(
        pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    order: list[str] = []
    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, name="bad", path="/bad", plugins={"broken": {}}),
                    route(upstream.url, name="good", path="/good")]},
        plugins={"broken": _plugin("broken", 1, order, fail=True)},
    )
    status, headers, body = await gateway.request("GET", "/bad")
    assert status == 500
    assert headers["Content-Type"] == "application/problem+json"
    assert "boom" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert upstream.requests == []
    status, _, _ = await gateway.request("GET", "/good")
    assert status == 200


def test_plugin_failure_is_logged_with_its_name(tmp_path):
    """The log line of a failing plugin names it (checked on a real process's stderr)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
        "from pygate.server import configure_logging\n"
        "from pygate.testing import start_gateway, start_fake_upstream\n"
        "from tests.test_plugins import _plugin\n"
        "async def main():\n"
        "    configure_logging('info')\n"
        "    up = await start_fake_upstream()\n"
        "    gw = await start_gateway({'routes': [{'name': 'r', 'path': '/', 'upstream': up.url,"
        " 'plugins': {'fragile': {}}}]}, {'fragile': _plugin('fragile', 1, [], fail=True)})\n"
        "    print(await gw.request('GET', '/'), flush=True)\n"
        "    await gw.close(); await up.close()\n"
        "asyncio.run(main())\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "(500," in done.stdout
    line = next(line for line in done.stderr.splitlines() if "plugin raised" in line)
    assert json.loads(line)["plugin"] == "fragile"


def test_missing_plugin_advice_names_a_real_distribution_or_none(monkeypatch):
    monkeypatch.setenv("PYGATE_LOAD_PLUGINS", "cors")  # the others count as not installed
    config = load_data({"plugins": {"jwtt": {}},
                        "routes": [route("http://127.0.0.1:9", plugins={"nope": {}}),
                                   route("http://127.0.0.1:9", name="t", path="/t",
                                         plugins={"transform": {}})]})
    with pytest.raises(ConfigError) as caught:
        build_gateway(config, extra_plugins={"jwt": example_plugin})
    issues = {issue.path: issue.message for issue in caught.value.issues}
    # a typo of an installed plugin: the name it may be, no install advice
    assert issues["plugins.jwtt"] == "plugin 'jwtt' is not installed; did you mean 'jwt'?"
    # named on a route only: reported at the route's key path
    assert issues["routes[0].plugins.nope"].startswith("plugin 'nope' is not installed (no ")
    assert "pip install" not in issues["routes[0].plugins.nope"]
    # one of this project's plugins, not installed here: its real distribution
    assert issues["routes[1].plugins.transform"] == (
        "plugin 'transform' is not installed (install it with: pip install pygate-transform)")


CHECK_EVERYTHING = """[gateway]
listen = "127.0.0.1:80800"

[plugins.stamp]
vaule = "x"

[upstreams.users]
targets = ["ftp://x"]

[[routes]]
name = "a"
path = "/a"
upstream = "users"
plugins = { stmap = {} }

[[routes]]
name = "b"
path = "b"
upstream = "users"
plugins = { stamp = { value = 3 } }

[[routes]]
name = "c"
path = "/c"
upstream = "users"
"""


def test_check_reports_every_error_once_in_file_order_at_its_key_path(tmp_path: Path) -> None:
    """Core and plugin errors together, in one run; a global table's typo once (not again
    for the routes that inherit it); a short-form value named by its own key."""
    from pygate.app import load_gateway

    path = tmp_path / "pygate.toml"
    path.write_text(CHECK_EVERYTHING)
    with pytest.raises(ConfigError) as caught:
        load_gateway(path, extra_plugins={"stamp": example_plugin})
    assert [(i.path, i.message.split(";")[0].split(" (")[0]) for i in caught.value.issues] == [
        ("gateway.listen", "expected \"HOST:PORT\" with a port 0-65535, found "
                           "'127.0.0.1:80800'"),
        ("plugins.stamp.vaule", "unknown key"),
        ("upstreams.users.targets[0]", "expected a target like \"http://127.0.0.1:3001\", "
                                       "found 'ftp://x'"),
        ("routes[0].plugins.stmap", "plugin 'stmap' is not installed"),
        ("routes[1].path", "expected a path starting with '/', found 'b'"),
        ("routes[1].plugins.stamp.value", "input should be a valid string, found 3"),
    ]
    assert "did you mean 'stamp'?" in caught.value.issues[3].message


def test_check_with_a_valid_core_orders_plugin_errors_by_file(tmp_path: Path) -> None:
    from pygate.app import load_gateway

    path = tmp_path / "pygate.toml"
    path.write_text(CHECK_EVERYTHING.replace("80800", "8080").replace("ftp://x", "http://x")
                    .replace('path = "b"', 'path = "/b"'))
    with pytest.raises(ConfigError) as caught:
        load_gateway(path, extra_plugins={"stamp": example_plugin})
    assert [i.path for i in caught.value.issues] == [
        "plugins.stamp.vaule", "routes[0].plugins.stmap", "routes[1].plugins.stamp.value"]


def test_plugin_config_errors_carry_the_key_path():
    config = load_data({"plugins": {"stamp": {"vaule": "x"}},
                        "routes": [route("http://127.0.0.1:9",
                                         plugins={"stamp": {"value": 3}})]})
    with pytest.raises(ConfigError) as caught:
        build_gateway(config, extra_plugins={"stamp": example_plugin})
    text = caught.value.render()
    assert "plugins.stamp.vaule: unknown key; did you mean 'value'?" in text
    assert "routes[0].plugins.stamp.value:" in text


def test_chain_is_compiled_once_per_route():
    config = load_data({"plugins": {"stamp": {"value": "g"}},
                        "routes": [route("http://127.0.0.1:9", name="a", path="/a"),
                                   route("http://127.0.0.1:9", name="b", path="/b",
                                         plugins={"stamp": False})]})
    gateway = build_gateway(config, extra_plugins={"stamp": example_plugin})
    chains = {r.name: r.payload.chain for r in gateway.router.routes}
    assert chains["a"].plugins == ("stamp",)
    assert chains["a"].configs["stamp"].value == "g"
    assert [step.plugin for step in chains["a"].transform_request] == ["stamp"]
    assert chains["b"].plugins == ()
    # implementations that take a subset of the arguments are called with that subset
    auth = chains["a"].authenticate[0]
    request = make_mocked_request("GET", "/a", headers={"X-Demo-User": "ann"})
    identity = asyncio.run(auth.call(request, object()))  # ctx is not passed on
    assert auth.is_async and identity is not None and identity.id == "ann"


def test_hook_names_are_the_documented_ones():
    assert REQUEST_HOOKS == ("pre_route", "authenticate", "admit", "transform_request",
                             "aggregate", "transform_response", "post_response", "log")


def test_misspelled_hook_fails_at_load():
    module = types.ModuleType("typo")

    @hookimpl
    def authenticat(request: Any) -> None:
        return None

    module.authenticat = authenticat  # type: ignore[attr-defined]
    config = load_data({"plugins": {"typo": {}}, "routes": [route("http://127.0.0.1:9")]})
    with pytest.raises(ConfigError) as caught:
        build_gateway(config, extra_plugins={"typo": module})
    assert "plugins.typo" in caught.value.render()
    assert "authenticat" in caught.value.render()


def test_plugins_command_lists_installed_plugins_as_json():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert isinstance(listed, list)
    for entry in listed:
        assert {"name", "version", "distribution", "hooks"} <= set(entry)


async def test_requests_refused_before_routing_reach_global_log_and_post_response(
        pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    example_plugin.seen.clear()
    gateway = await pygate_gateway({"plugins": {"stamp": {}}, "routes": [route(upstream.url)]},
                                   plugins={"stamp": example_plugin})
    from yarl import URL

    async with gateway.session.get(URL(gateway.url + "/a/%2F/b", encoded=True)) as response:
        assert response.status == 400
        assert response.headers["X-Stamped"] == "yes"
    for _ in range(50):
        if example_plugin.seen:
            break
        await asyncio.sleep(0.01)
    record = example_plugin.seen[-1]
    assert (record["status"], record["route"]) == (400, None)
    assert upstream.requests == []


async def test_log_hook_without_record_reads_the_request_from_ctx(pygate_gateway, fake_upstream):
    """A ``log(ctx)`` implementation is called after each response with the status, the
    route and the start and end times on ``ctx``; beside one that names ``record``
    (the stamp plugin), both run and the record is still there for the latter."""
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({})

    upstream = await fake_upstream(slow)
    seen: list[tuple[int, str | None, float, Any]] = []
    module = types.ModuleType("timer")

    @hookimpl
    def log(ctx: Context) -> None:
        seen.append((ctx.status, ctx.route.name if ctx.route else None, ctx.end - ctx.start,
                     ctx.upstream))

    module.log = log  # type: ignore[attr-defined]
    example_plugin.seen.clear()
    gateway = await pygate_gateway(
        {"routes": [route(upstream.url, name="timed", path="/timed", plugins={"timer": {}}),
                    route(upstream.url, name="both", path="/both",
                          plugins={"timer": {}, "stamp": {}})]},
        plugins={"timer": module, "stamp": example_plugin})
    assert (await gateway.request("GET", "/timed"))[0] == 200
    assert (await gateway.request("GET", "/nowhere"))[0] == 404
    assert (await gateway.request("GET", "/both"))[0] == 200
    for _ in range(100):
        if len(seen) == 2 and example_plugin.seen:
            break
        await asyncio.sleep(0.01)
    assert [(status, name) for status, name, _, _ in seen] == [(200, "timed"), (200, "both")]
    assert all(0.05 <= seconds < 5 for _, _, seconds, _ in seen)  # the upstream's delay
    assert seen[0][3] is not None
    assert [(r["route"], r["status"]) for r in example_plugin.seen] == [("both", 200)]
