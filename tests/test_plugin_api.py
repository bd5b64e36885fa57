"""pygate.plugin: the one module plugins import, its Gateway facade, its versioning rule."""

from __future__ import annotations

import ast
import asyncio
import time
import types
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel, ConfigDict

import pygate
from pygate import plugin
from pygate.plugin import Context, Gateway, hookimpl
from pygate.testing import free_port, start_gateway

PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"
NOT_SOURCE = {"build", "dist", "__pycache__"}


def route(upstream: str, **extra: Any) -> dict[str, Any]:
    return {"name": "r", "path": "/", "upstream": upstream, **extra}


# ---------------------------------------------------------------------------
# First-party plugins import pygate.plugin only
# ---------------------------------------------------------------------------


def first_party_sources() -> list[Path]:
    """Every .py file of every plugin distribution (packages and tests), build output aside."""
    found = []
    for path in sorted(PLUGINS_DIR.glob("*/**/*.py")):
        parts = path.relative_to(PLUGINS_DIR).parts
        if any(part in NOT_SOURCE or part.endswith(".egg-info") for part in parts):
            continue
        found.append(path)
    return found


def pygate_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of ``pygate`` or a submodule, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "pygate":  # ``from pygate import testing`` names the module
                modules = [f"pygate.{alias.name}" if alias.name in ("plugin", "testing")
                           else "pygate" for alias in node.names]
        found += [(node.lineno, name) for name in modules
                  if name == "pygate" or name.startswith("pygate.")]
    return found


def test_first_party_plugins_import_only_the_plugin_api() -> None:
    sources = first_party_sources()
    packages = {path.relative_to(PLUGINS_DIR).parts[0] for path in sources}
    assert len(packages) >= 10 and len(sources) >= 60, (packages, len(sources))
    wrong = []
    for path in sources:
        in_tests = "tests" in path.relative_to(PLUGINS_DIR).parts
        allowed = {"pygate.plugin", "pygate.testing"} if in_tests else {"pygate.plugin"}
        wrong += [f"{path.relative_to(PLUGINS_DIR)}:{line}: {name}"
                  for line, name in pygate_imports(path) if name not in allowed]
    assert not wrong, "import pygate.plugin instead (tests: also pygate.testing):\n" + \
        "\n".join(wrong)


def test_the_import_check_sees_every_form(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("import pygate\nimport pygate.app as app\nfrom pygate import Context\n"
                      "from pygate.config import Duration\nfrom pygate import testing\n"
                      "import pygate_jwt\nfrom . import local\n"
                      "def late():\n    from pygate.shared import PerLoop\n")
    assert pygate_imports(source) == [
        (1, "pygate"), (2, "pygate.app"), (3, "pygate"), (4, "pygate.config"),
        (5, "pygate.testing"), (9, "pygate.shared")]


# ---------------------------------------------------------------------------
# What the module offers
# ---------------------------------------------------------------------------

PROMISED = [
    "hookimpl", "Context", "Identity", "RouteInfo", "UpstreamRequest", "GatewayError",
    "BadRequest", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed",
    "PayloadTooLarge", "TooManyRequests", "ServiceUnavailable", "BadGateway", "GatewayTimeout",
    "problem_response", "Duration", "Size", "Backend", "suggest", "key_path", "PerLoop",
    "Gateway", "API_VERSION", "ClientCert", "ValueTemplate", "MissingValue", "read_body",
]


def test_all_lists_the_whole_api() -> None:
    assert sorted(plugin.__all__) == sorted(PROMISED)
    for name in plugin.__all__:
        assert getattr(plugin, name) is not None
    major, minor = plugin.API_VERSION.split(".")
    assert (int(major), int(minor)) == (1, 3)


def test_top_level_names_keep_working_and_are_the_same_objects() -> None:
    for name in ("hookimpl", "Context", "Identity", "RouteInfo", "UpstreamRequest",
                 "GatewayError", "Unauthorized", "Forbidden", "TooManyRequests",
                 "ServiceUnavailable", "problem_response"):
        assert getattr(pygate, name) is getattr(plugin, name), name


def test_deprecated_names_warn_and_keep_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(plugin._DEPRECATED, "OldIdentity",
                        (plugin.Identity, "use Identity (since 1.1; removed in 2.0)"))
    assert "OldIdentity" not in plugin.__all__
    assert "OldIdentity" in dir(plugin)
    with pytest.warns(DeprecationWarning, match=r"pygate.plugin.OldIdentity is deprecated: "
                                                r"use Identity \(since 1.1"):
        assert plugin.OldIdentity is plugin.Identity  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="OldIdentity"):
        from pygate.plugin import OldIdentity  # type: ignore[attr-defined]  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        plugin.Nonexistent  # type: ignore[attr-defined]  # noqa: B018


def test_star_import_warns_about_nothing() -> None:
    namespace: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from pygate.plugin import *", namespace)
    assert set(plugin.__all__) <= set(namespace)


# ---------------------------------------------------------------------------
# The Gateway facade, end to end
# ---------------------------------------------------------------------------


class Seen:
    """What the probe plugin saw, by hook."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.events if name == kind]


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = "g"


class Counter:
    """A per-loop object: counts its users' requests, records its closing."""

    made = 0

    def __init__(self) -> None:
        Counter.made += 1
        self.requests = 0
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def probe(seen: Seen, name: str = "probe") -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def config_schema() -> type[BaseModel]:
        return ProbeConfig

    @hookimpl
    def startup(gateway: Gateway, config: ProbeConfig | None) -> None:
        seen.events.append(("startup", (gateway, config)))
        state = gateway.state(name)
        state["counter"] = gateway.shared(name, Counter)
        for each in gateway.configs(name):
            state[id(each)] = f"prepared for {each.value}"

    @hookimpl
    def transform_request(ctx: Context, upstream_request: Any) -> None:
        state = ctx.gateway.state(name)
        state["counter"].requests += 1
        upstream_request.headers["X-Prepared"] = state[id(ctx.config)]
        seen.events.append(("request", ctx.gateway))

    @hookimpl
    def log(ctx: Context) -> None:
        seen.events.append(("log", ctx.gateway))

    @hookimpl
    async def shutdown(gateway: Gateway) -> None:
        counter = gateway.state(name)["counter"]
        seen.events.append(("shutdown", (gateway, counter.closed)))

    for hook in (config_schema, startup, transform_request, log, shutdown):
        setattr(module, hook.__name__, hook)
    return module


async def test_startup_shutdown_and_hooks_share_one_typed_gateway(fake_upstream) -> None:
    upstream = await fake_upstream()
    seen = Seen()
    gateway = await start_gateway(
        {"gateway": {"timeout": "7s", "max_body": "2MB"},
         "plugins": {"probe": {}},
         "routes": [route(upstream.url, name="a", path="/a"),
                    route(upstream.url, name="b", path="/b", plugins={"probe": {"value": "b"}})]},
        {"probe": probe(seen)})
    core = gateway.running.gateway
    try:
        ((facade, config),) = seen.of("startup")
        assert isinstance(facade, Gateway) and facade is core.facade
        assert config.value == "g"
        assert [c.value for c in facade.configs("probe")] == ["g", "b"]
        assert facade.configs("probe")[0] is config
        assert isinstance(facade.client, aiohttp.ClientSession) and facade.client is core.client
        assert (facade.timeout, facade.max_body) == (7.0, 2 * 1024 * 1024)
        await gateway.request("GET", "/a")
        await gateway.request("GET", "/b")
        assert [r.headers["X-Prepared"] for r in upstream.requests] == [
            "prepared for g", "prepared for b"]
        assert facade.state("probe")["counter"].requests == 2
        for _ in range(50):
            if len(seen.of("log")) == 2:
                break
            await asyncio.sleep(0.01)
        assert seen.of("request") == [facade, facade] and seen.of("log") == [facade, facade]
        with pytest.raises(KeyError, match="'prbe' is not a plugin of this gateway; "
                                           "did you mean 'probe'"):
            facade.state("prbe")
    finally:
        await gateway.close()
    ((stopped, closed_during_shutdown),) = seen.of("shutdown")
    assert stopped is facade
    assert not closed_during_shutdown  # released after the plugin's shutdown, not before
    assert facade.state("probe") == {}  # emptied by the core after shutdown
    with pytest.raises(RuntimeError, match="not running"):
        facade.client  # noqa: B018


async def test_shared_objects_outlive_one_gateway_and_close_with_the_last(fake_upstream):
    """A reload starts the new gateway before the old one stops: both get one object."""
    upstream = await fake_upstream()
    seen = Seen()
    config = {"plugins": {"probe": {}}, "routes": [route(upstream.url)]}
    made = Counter.made
    old = await start_gateway(config, {"probe": probe(seen)})
    new = await start_gateway(config, {"probe": probe(seen)})
    counter = old.running.gateway.facade.state("probe")["counter"]
    try:
        assert new.running.gateway.facade.state("probe")["counter"] is counter
        assert Counter.made == made + 1
        await old.request("GET", "/")
        await new.request("GET", "/")
        assert counter.requests == 2
        await old.close()
        assert not counter.closed
    finally:
        await new.close()
    assert counter.closed
    assert ("probe", Counter) not in plugin._SHARED._table  # nothing kept once unused


async def test_a_facade_hands_out_one_object_per_factory(fake_upstream):
    upstream = await fake_upstream()
    gateway = await start_gateway({"plugins": {"probe": {}}, "routes": [route(upstream.url)]},
                                  {"probe": probe(Seen())})
    try:
        facade = gateway.running.gateway.facade
        first = facade.state("probe")["counter"]
        assert facade.shared("probe", Counter) is first  # asked again: no second user
        with pytest.raises(KeyError, match="'prob' is not a plugin"):
            facade.shared("prob", Counter)
    finally:
        await gateway.close()
    assert first.closed


async def test_log_hooks_of_requests_refused_by_the_parser_get_the_gateway(fake_upstream):
    upstream = await fake_upstream()
    seen = Seen()
    gateway = await start_gateway({"plugins": {"probe": {}}, "routes": [route(upstream.url)]},
                                  {"probe": probe(seen)})
    try:
        host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.read(100)).startswith(b"HTTP/1.0 400")
        writer.close()
        for _ in range(100):
            if seen.of("log"):
                break
            await asyncio.sleep(0.01)
        assert seen.of("log") == [gateway.running.gateway.facade]
    finally:
        await gateway.close()


def outcomes(calls: list[Any], records: list[Any]) -> types.ModuleType:
    """1.3: keeps each call's UpstreamRequest and, in ``log``, the request's record."""
    module = types.ModuleType("outcomes")

    @hookimpl
    def pre_route(ctx: Context) -> None:
        ctx.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    @hookimpl
    def transform_request(upstream_request: Any) -> None:
        calls.append(upstream_request)

    @hookimpl
    def log(record: dict[str, Any]) -> None:
        records.append(record)

    for hook in (pre_route, transform_request, log):
        setattr(module, hook.__name__, hook)
    return module


async def test_a_call_s_outcome_and_the_trace_id_reach_the_log_hooks(fake_upstream) -> None:
    """What API 1.3 added: the core fills in each call's outcome on its UpstreamRequest,
    and ``ctx.trace_id`` goes into the access record."""
    async def teapot(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=418)

    upstream = await fake_upstream(handler=teapot)
    dead = f"http://127.0.0.1:{free_port()}"
    calls: list[Any] = []
    records: list[Any] = []
    gateway = await start_gateway(
        {"plugins": {"outcomes": {}},
         "routes": [route(upstream.url, name="up", path="/up"),
                    route(dead, name="down", path="/down")]},
        {"outcomes": outcomes(calls, records)})
    try:
        before = time.monotonic()
        assert (await gateway.request("GET", "/up"))[0] == 418
        assert (await gateway.request("GET", "/down"))[0] == 502
        for _ in range(100):
            if len(records) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await gateway.close()
    answered, refused = calls
    assert (answered.status, answered.sent_to, answered.error) == (418, upstream.url, None)
    assert before <= answered.started <= time.monotonic() and 0 < answered.elapsed < 5
    assert (refused.status, refused.sent_to) == (0, dead)
    assert isinstance(refused.error, plugin.BadGateway) and refused.error.status == 502
    assert [r["trace_id"] for r in records] == ["4bf92f3577b34da6a3ce929d0e0e4736"] * 2


# ---------------------------------------------------------------------------
# Plugins written before pygate.plugin: startup(app, config), shutdown(app)
# ---------------------------------------------------------------------------


def old_style(seen: Seen) -> types.ModuleType:
    module = types.ModuleType("legacy")

    @hookimpl
    def startup(app: Any, config: Any) -> None:
        app.state["legacy"] = {"client": app.client, "configs": app.plugin_configs("legacy")}
        seen.events.append(("startup", (app, config)))

    @hookimpl
    def shutdown(app: Any) -> None:
        seen.events.append(("shutdown", app.state.pop("legacy")))

    module.startup = startup  # type: ignore[attr-defined]
    module.shutdown = shutdown  # type: ignore[attr-defined]
    return module


async def test_startup_app_still_works_with_a_deprecation_warning(fake_upstream):
    upstream = await fake_upstream()
    seen = Seen()
    with pytest.warns(DeprecationWarning) as warned:
        gateway = await start_gateway({"plugins": {"legacy": {"x": 1}},
                                       "routes": [route(upstream.url)]},
                                      {"legacy": old_style(seen)})
        core = gateway.running.gateway
        try:
            assert (await gateway.request("GET", "/"))[0] == 200
        finally:
            await gateway.close()
    messages = [str(w.message) for w in warned]
    assert any("plugin 'legacy': the 'app' argument of startup() is deprecated" in m
               and "name it 'gateway'" in m for m in messages), messages
    assert any("argument of shutdown()" in m for m in messages), messages
    assert all(w.filename == __file__ for w in warned if "legacy" in str(w.message))
    ((app, config),) = seen.of("startup")
    assert app is core  # the object such plugins were written against
    assert config == {"x": 1}
    ((kept),) = seen.of("shutdown")  # what startup put in app.state
    assert isinstance(kept["client"], aiohttp.ClientSession)
    assert kept["configs"][0] == {"x": 1}  # the global table (routes: copies)
