"""logging through an in-process gateway (pygate.testing) against fake upstreams."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pygate_logging
import pytest
from aiohttp import web
from yarl import URL

from pygate.plugin import Identity, hookimpl
from pygate.testing import free_port, start_gateway

if TYPE_CHECKING:
    from pygate.testing import TestGateway

pytest_plugins = ["pygate.testing"]

FIELDS = ["time", "request_id", "method", "path", "route", "upstream", "target", "status",
          "duration_ms", "bytes_in", "bytes_out", "client_ip", "consumer", "cache", "error"]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _test_auth() -> types.ModuleType:
    """Trusts ``X-Test-User`` (tests only), so that lines carry a consumer."""
    module = types.ModuleType("test-auth")
    module.PRIORITY = 2000  # type: ignore[attr-defined]

    @hookimpl
    def authenticate(request: web.BaseRequest) -> Identity | None:
        user = request.headers.get("X-Test-User")
        return None if user is None else Identity(id=user, source="test-auth")

    module.authenticate = authenticate  # type: ignore[attr-defined]
    return module


PLUGINS = {"logging": pygate_logging, "test-auth": _test_auth()}


def config(upstream: str, log_path: Path | None, **settings: Any) -> dict[str, Any]:
    if log_path is not None:
        settings.setdefault("path", str(log_path))
    return {"plugins": {"logging": settings, "test-auth": {}},
            "routes": [{"name": "api", "path": "/api", "upstream": upstream}]}


@asynccontextmanager
async def gateway_for(data: dict[str, Any], base_dir: str = ".",
                      ) -> AsyncIterator[TestGateway]:
    """A gateway that the test stops itself (stopping flushes the log)."""
    gateway = await start_gateway(data, PLUGINS, base_dir=base_dir)
    try:
        yield gateway
    finally:
        await gateway.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def upstream_answering(fake_upstream: Any, status: int = 200,
                             headers: dict[str, str] | None = None) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="hello", headers=headers or {})

    return await fake_upstream(handler=handler)


async def test_hook_log_writes_one_json_line_per_request(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream, headers={"X-Cache": "HIT"})
    log_path = tmp_path / "access.log"
    async with gateway_for(config(upstream.url, log_path)) as gateway:
        status, headers, _ = await gateway.request(
            "POST", "/api/users/7?page=2", data=b"12345", headers={"X-Test-User": "alice"})
        assert status == 200
        request_id = headers["X-Request-ID"]
        await gateway.request("GET", "/nowhere")
    lines = read_lines(log_path)
    assert len(lines) == 2
    line = lines[0]
    assert list(line) == FIELDS
    assert ISO_UTC.match(line["time"])
    assert line["request_id"] == request_id
    assert line["method"] == "POST"
    assert line["path"] == "/api/users/7?page=2"
    assert line["route"] == "api"
    assert line["upstream"] == upstream.url
    assert line["target"]
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["bytes_in"] == 5
    assert line["bytes_out"] == 5
    assert line["client_ip"] == "127.0.0.1"
    assert line["consumer"] == "alice"
    assert line["cache"] == "HIT"
    assert line["error"] is None
    missing = lines[1]
    assert (missing["status"], missing["route"], missing["path"]) == (404, None, "/nowhere")
    assert missing["error"] and missing["cache"] is None and missing["consumer"] is None


async def test_hook_post_response_keeps_the_final_response(tmp_path, fake_upstream):
    """The cache status is read from the response as it went out, after every plugin."""
    stamp = types.ModuleType("stamp")
    stamp.PRIORITY = 100  # type: ignore[attr-defined]

    @hookimpl
    def post_response(response: web.StreamResponse) -> None:
        response.headers["X-Cache"] = "MISS"

    stamp.post_response = post_response  # type: ignore[attr-defined]
    upstream = await upstream_answering(fake_upstream)
    log_path = tmp_path / "access.log"
    data = config(upstream.url, log_path)
    data["plugins"]["stamp"] = {}
    gateway = await start_gateway(data, {**PLUGINS, "stamp": stamp})
    try:
        await gateway.request("GET", "/api")
    finally:
        await gateway.close()
    assert read_lines(log_path)[0]["cache"] == "MISS"


async def test_query_parameters_and_credentials_are_redacted(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    log_path = tmp_path / "access.log"
    settings = {"redact_query": ["token", "Secret"],
                "headers": ["User-Agent", "Authorization", "Cookie", "X-Absent"]}
    async with gateway_for(config(upstream.url, log_path, **settings)) as gateway:
        url = URL(gateway.url + "/api/x?token=abc&keep=1&SECRET=s3&%74oken=enc&access_token=t",
                  encoded=True)  # sent as written: %74 is "t"
        headers = {"Authorization": "Bearer eyJhbGciOi.payload.sig", "Cookie": "session=abcdef",
                   "User-Agent": "probe/1.0"}
        async with gateway.session.get(url, headers=headers) as response:
            assert response.status == 200
    text = log_path.read_text()
    for secret in ("abc", "s3", "enc", "eyJhbGciOi", "abcdef"):
        assert secret not in text
    line = read_lines(log_path)[0]
    # redact_query replaces the default list, so access_token is kept here
    assert line["path"] == ("/api/x?token=REDACTED&keep=1&SECRET=REDACTED&%74oken=REDACTED"
                            "&access_token=t")
    assert line["headers"] == {"User-Agent": "probe/1.0", "Authorization": "REDACTED",
                               "Cookie": "REDACTED"}


async def test_default_redaction_covers_token_parameters(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    log_path = tmp_path / "access.log"
    async with gateway_for(config(upstream.url, log_path)) as gateway:
        await gateway.request("GET", "/api?access_token=a1&api_key=k1&token=t1&q=x")
    line = read_lines(log_path)[0]
    assert line["path"] == "/api?access_token=REDACTED&api_key=REDACTED&token=REDACTED&q=x"
    assert "headers" not in line


async def test_sample_zero_logs_every_error_and_no_success(tmp_path, fake_upstream):
    ok = await upstream_answering(fake_upstream)
    failing = await upstream_answering(fake_upstream, status=503)
    log_path = tmp_path / "access.log"
    data = config(ok.url, log_path, sample=0)
    data["routes"] += [
        {"name": "failing", "path": "/failing", "upstream": failing.url},
        {"name": "down", "path": "/down", "upstream": f"http://127.0.0.1:{free_port()}"},
    ]
    async with gateway_for(data) as gateway:
        for _ in range(20):
            assert (await gateway.request("GET", "/api"))[0] == 200
        for path, expected in (("/failing", 503), ("/down", 502), ("/missing", 404)) * 3:
            assert (await gateway.request("GET", path))[0] == expected
    statuses = [line["status"] for line in read_lines(log_path)]
    assert statuses == [503, 502, 404] * 3


async def test_sample_keeps_about_that_share_of_successes(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    log_path = tmp_path / "access.log"
    async with gateway_for(config(upstream.url, log_path, sample=0.5)) as gateway:
        for _ in range(200):
            await gateway.request("GET", "/api")
    assert 50 <= len(read_lines(log_path)) <= 150  # binomial(200, 0.5): far inside


async def test_console_format(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    log_path = tmp_path / "access.log"
    async with gateway_for(config(upstream.url, log_path, format="console")) as gateway:
        await gateway.request("GET", "/api/a%0Ab?token=x", headers={"X-Test-User": "bob"})
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z GET /api/a\\x0ab\?token=REDACTED "
                    r"\d{3} ", line), line  # (the fake upstream's router 404s on a newline)
    assert "route=api" in line and "consumer=bob" in line and "duration_ms=" in line
    assert "error=" not in line and "cache=" not in line  # empty fields are left out


async def test_stdout_is_the_default_destination(capsys, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    async with gateway_for(config(upstream.url, None)) as gateway:
        await gateway.request("GET", "/api/out")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["path"], line["status"]) for line in lines] == [("/api/out", 200)]


async def test_lines_are_flushed_on_shutdown(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    log_path = tmp_path / "access.log"
    gateway = await start_gateway(config(upstream.url, log_path, flush_interval="1h"), PLUGINS)
    try:
        for _ in range(25):
            await gateway.request("GET", "/api")
        await asyncio.sleep(0.05)
        assert log_path.read_text() == ""  # still buffered: the writer flushes hourly
    finally:
        await gateway.close()
    assert len(read_lines(log_path)) == 25


class BlockedFile:
    """A destination that hangs until released, as a stuck disk or a full pipe would."""

    label = "blocked"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> None:
        self.entered.set()
        self.release.wait(30)
        self.text.append(text)

    def close(self) -> None:
        pass


async def test_a_slow_destination_never_delays_responses(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    gateway = await start_gateway(config(upstream.url, tmp_path / "a.log",
                                         flush_interval="1ms"), PLUGINS)
    blocked = BlockedFile()
    try:
        sinks = gateway.running.gateway.facade.state("logging")[pygate_logging.SINKS]
        sink = sinks[str(tmp_path / "a.log")]
        sink.target = blocked
        await gateway.request("GET", "/api/first")
        assert await asyncio.to_thread(blocked.entered.wait, 5)  # the writer is stuck now
        started = time.monotonic()
        for _ in range(50):
            assert (await gateway.request("GET", "/api/next"))[0] == 200
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)
        assert sink.pending == 50  # every line is waiting in memory, none was written
        assert not blocked.text
        assert elapsed < 5  # (the writer stays blocked for 30 s: no response waited for it)
    finally:
        blocked.release.set()
        await gateway.close()
    lines = "".join(blocked.text).splitlines()
    assert len(lines) == 51
    assert sum('"/api/next"' in line for line in lines) == 50


async def test_route_override_and_switch_off(tmp_path, fake_upstream):
    upstream = await upstream_answering(fake_upstream)
    main_log, quiet_log = tmp_path / "main.log", tmp_path / "quiet.log"
    data = config(upstream.url, main_log)
    data["routes"] += [
        {"name": "health", "path": "/health", "upstream": upstream.url,
         "plugins": {"logging": False}},
        {"name": "batch", "path": "/batch", "upstream": upstream.url,
         "plugins": {"logging": {"path": str(quiet_log), "format": "console"}}},
    ]
    async with gateway_for(data) as gateway:
        for path in ("/api", "/health", "/batch", "/api"):
            assert (await gateway.request("GET", path))[0] == 200
        sinks = gateway.running.gateway.facade.state("logging")[pygate_logging.SINKS]
        assert len(sinks) == 2  # one sink per file
    assert [line["route"] for line in read_lines(main_log)] == ["api", "api"]
    assert " GET /batch 200 " in quiet_log.read_text()


@pytest.mark.parametrize(("settings", "where"), [
    ({"sample": 1.5}, "plugins.logging.sample"),
    ({"format": "text"}, "plugins.logging.format"),
    ({"formt": "json"}, "plugins.logging.formt"),
    ({"path": "no/such/folder/access.log"}, "plugins.logging.path"),
    ({"headers": ["Bad Header"]}, "plugins.logging.headers"),
    ({"flush_interval": "0s"}, "plugins.logging.flush_interval"),
])
async def test_config_errors_name_the_key(tmp_path, settings, where):
    data = {"plugins": {"logging": settings},
            "routes": [{"name": "r", "path": "/", "upstream": "http://127.0.0.1:9"}]}
    # the gateway refuses to start: pygate's ConfigError lists every problem
    with pytest.raises(Exception, match="configuration error") as raised:
        await start_gateway(data, {"logging": pygate_logging}, base_dir=str(tmp_path))
    assert any(issue.path.startswith(where) for issue in raised.value.issues), \
        raised.value.issues


async def test_relative_path_is_relative_to_the_config_file(tmp_path):
    data = {"plugins": {"logging": {"path": "access.log"}},
            "routes": [{"name": "r", "path": "/", "upstream": "http://127.0.0.1:9"}]}
    async with gateway_for(data, base_dir=str(tmp_path)) as gateway:
        (config,) = gateway.running.gateway.facade.configs("logging")
    assert config.path == str(tmp_path / "access.log")
