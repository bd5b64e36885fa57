"""Helpers for the admin, reload and watch tests: the admin client, waiting, a client load.

Everything talks to real ``pygate serve`` processes over loopback sockets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayProcess, accepts_connections

TOKEN = "admin-token-for-tests"


def admin_section(port: int, token: str | None = TOKEN) -> str:
    line = f'token = "{token}"\n' if token is not None else ""
    return f'\n[admin]\nlisten = "127.0.0.1:{port}"\n{line}'


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Admin:
    """A client of one admin listener."""

    http: aiohttp.ClientSession
    port: int
    token: str | None = TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def call(self, method: str, path: str, *, token: str | bool | None = True,
                   headers: dict[str, str] | None = None) -> Reply:
        sent = dict(headers or {})
        if token is True and self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        elif isinstance(token, str):
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url + path, headers=sent,
                                     timeout=aiohttp.ClientTimeout(total=40)) as response:
            return Reply(response.status, response.headers, await response.text())

    async def get(self, path: str, **kwargs: Any) -> Any:
        reply = await self.call("GET", path, **kwargs)
        assert reply.status == 200, (path, reply.status, reply.text)
        return reply.json()

    async def reload(self) -> Reply:
        return await self.call("POST", "/reload")

    async def wait(self, within: float = 15.0) -> None:
        """Until the admin listener answers /healthz."""
        deadline = time.monotonic() + within
        while True:
            if await accepts_connections(self.port):
                try:
                    reply = await self.call("GET", "/healthz", token=False)
                    if reply.status == 200:
                        return
                except aiohttp.ClientError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"the admin listener on {self.port} did not answer in {within}s")
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 10.0,
                     what: str = "") -> Any:
    """Await ``check()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.02)


def events(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in gw.log_events() if e.get("event") == name]


@dataclass
class Load:
    """A client loop through the gateway: ``tasks`` clients on keep-alive connections
    and one opening a new connection per request, until stopped."""

    url: str
    paths: list[str]
    tasks: int = 4
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _running: list[asyncio.Task[None]] = field(default_factory=list)

    async def _client(self, index: int, fresh: bool) -> None:
        connector = aiohttp.TCPConnector(force_close=fresh, limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            n = 0
            while not self._stop.is_set():
                path = self.paths[(index + n) % len(self.paths)]
                n += 1
                try:
                    async with session.get(self.url + path,
                                           timeout=aiohttp.ClientTimeout(total=10)) as response:
                        await response.read()
                        if response.status == 200:
                            self.ok += 1
                        else:
                            self.failures.append(f"{path}: status {response.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(f"{path}: {type(exc).__name__}: {exc}")

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = [loop.create_task(self._client(i, fresh=False))
                         for i in range(self.tasks)]
        self._running.append(loop.create_task(self._client(self.tasks, fresh=True)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._running)
