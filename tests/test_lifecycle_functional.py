"""Lifecycle events (PRODUCT.md section 8) as structured log lines of a real ``pygate serve``.

listening, reloading/reloaded/refused, target healthy/unhealthy, breaker open/closed,
draining, stopped: each is emitted (found in the code, and seen in the log), as JSON,
or in the ``logging`` plugin's console format when that is the access log's format
(switched by a reload too).
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.admin_support import eventually
from tests.conftest import GatewayFactory, GatewayProcess, UpstreamFactory

EVENTS = ("listening", "reloading", "reloaded", "reload refused", "target healthy",
          "target unhealthy", "breaker open", "breaker closed", "draining", "stopped")

PYGATE = Path(__file__).resolve().parent.parent / "pygate"


def test_every_lifecycle_event_is_logged_by_the_core() -> None:
    source = "\n".join(p.read_text() for p in PYGATE.rglob("*.py"))
    for event in EVENTS:
        assert re.search(rf'log\.(info|warning|error)\(\s*"{event}"', source), event


_CONSOLE = re.compile(r"^(\S+) \[(\w+)\s*\] (.*?)(?= [\w.-]+=|$)(.*)$")


def console_events(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The core's console lines (``TIME [level] event key=value ...``), parsed."""
    found = []
    for line in gw.stderr().splitlines():
        match = _CONSOLE.match(line)
        if match is not None:
            found.append({"timestamp": match.group(1), "level": match.group(2),
                          "event": match.group(3), "rest": match.group(4)})
    return found


def seen(gw: GatewayProcess, event: str, console: bool) -> list[dict[str, Any]]:
    lines = console_events(gw) if console else gw.log_events()
    return [e for e in lines if e.get("event") == event]


class Switch:
    """An upstream whose health check and answers the test turns bad and good."""

    def __init__(self) -> None:
        self.healthy = True
        self.failing = False

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 500)

    async def answer(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.failing else 200, text="answer")


def config(checked: str, fragile: str, *, logging_format: str | None = None) -> str:
    plugin = f'\n[plugins.logging]\nformat = "{logging_format}"\n' if logging_format else ""
    return f"""{plugin}
[upstreams.checked]
targets = ["{checked}"]
health = {{ path = "/health", interval = "100ms", timeout = "1s", unhealthy = 1, healthy = 1 }}

[upstreams.fragile]
targets = ["{fragile}"]
retries = 0
breaker = {{ failures = 2, cooldown = "300ms" }}

[[routes]]
name = "checked"
path = "/checked"
upstream = "checked"

[[routes]]
name = "fragile"
path = "/fragile"
upstream = "fragile"
"""


async def exercise(gw: GatewayProcess, switch: Switch, http: aiohttp.ClientSession,
                   console: bool, valid_reload: str) -> None:
    """Make every lifecycle event happen once more, in order."""

    async def logged(event: str, count: int = 1) -> list[dict[str, Any]]:
        async def check() -> list[dict[str, Any]] | None:
            found = seen(gw, event, console)
            return found if len(found) >= count else None

        result: list[dict[str, Any]] = await eventually(check, what=event)
        return result

    await logged("listening")
    switch.healthy = False
    unhealthy = await logged("target unhealthy")
    switch.healthy = True
    healthy = await logged("target healthy")
    if not console:
        assert unhealthy[0]["upstream"] == "checked" and healthy[0]["upstream"] == "checked"
        assert unhealthy[0]["level"] == "warning" and "reason" in unhealthy[0]

    switch.failing = True
    for _ in range(2):
        async with http.get(gw.url + "/fragile/x") as response:
            assert response.status == 503
    opened = await logged("breaker open")
    switch.failing = False
    await asyncio.sleep(0.35)  # the cooldown: the next request is the trial
    async with http.get(gw.url + "/fragile/x") as response:
        assert response.status == 200
    closed = await logged("breaker closed")
    if not console:
        assert opened[0]["upstream"] == "fragile" and closed[0]["upstream"] == "fragile"

    reloaded = len(seen(gw, "reloaded", console))
    gw.config_path.write_text(valid_reload)
    gw.proc.send_signal(signal.SIGHUP)
    await logged("reloading")
    await logged("reloaded", reloaded + 1)
    gw.config_path.write_text(valid_reload + "\nnot toml at all [\n")
    gw.proc.send_signal(signal.SIGHUP)
    refused = await logged("reload refused")
    if not console:
        assert refused[0]["level"] == "error" and "invalid TOML" in refused[0]["errors"][0]

    assert await gw.terminate() == 0
    for event in ("draining", "stopped"):
        assert seen(gw, event, console), event
    assert "Traceback" not in gw.stderr()


async def test_lifecycle_events_are_json_lines(gateway_process: GatewayFactory,
                                               upstream: UpstreamFactory,
                                               http: aiohttp.ClientSession) -> None:
    switch = Switch()
    checked = await upstream(routes={"GET /health": switch.health})
    fragile = await upstream(switch.answer)
    text = config(checked.url, fragile.url)
    gw = await gateway_process(text)
    await exercise(gw, switch, http, console=False, valid_reload=text + "\n# again\n")
    for event in EVENTS:
        assert seen(gw, event, console=False), event
    assert not console_events(gw)


async def test_lifecycle_events_follow_the_access_log_format(
        gateway_process: GatewayFactory, upstream: UpstreamFactory,
        http: aiohttp.ClientSession) -> None:
    switch = Switch()
    checked = await upstream(routes={"GET /health": switch.health})
    fragile = await upstream(switch.answer)
    console = config(checked.url, fragile.url, logging_format="console")
    gw = await gateway_process(console)
    await exercise(gw, switch, http, console=True, valid_reload=console + "\n# again\n")
    for event in EVENTS:
        assert seen(gw, event, console=True), event
    assert not [line for line in gw.stderr().splitlines() if line.startswith("{")]


async def test_a_reload_switches_the_core_log_format(gateway_process: GatewayFactory,
                                                     upstream: UpstreamFactory) -> None:
    up = await upstream()
    plain = f'[[routes]]\nname = "api"\npath = "/api"\nupstream = "{up.url}"\n'
    gw = await gateway_process(plain)

    async def listening() -> bool:
        return [e["event"] for e in gw.log_events()] == ["listening"]

    await eventually(listening, what="listening, in JSON")

    gw.config_path.write_text(plain + '\n[plugins.logging]\nformat = "console"\n')
    gw.proc.send_signal(signal.SIGHUP)

    async def switched() -> bool:
        return bool(seen(gw, "previous configuration stopped", console=True))

    await eventually(switched, what="console lines after the reload")
    assert gw.log_events()[-1]["event"] == "reloading"  # the last JSON line
    gw.config_path.write_text(plain)  # and back
    gw.proc.send_signal(signal.SIGHUP)

    async def back() -> bool:
        return len([e for e in gw.log_events() if e["event"] == "previous configuration stopped"
                    ]) == 1

    await eventually(back, what="JSON lines again")
    assert await gw.terminate() == 0
    assert gw.log_events()[-1]["event"] == "stopped"
