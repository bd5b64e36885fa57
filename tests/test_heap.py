"""The heap after start-up and after a reload.

``pygate serve`` freezes what start-up built so that the garbage collector
stops walking it (:func:`pygate.server.settle_heap`); a reload must still let
the replaced gateway be freed, or every SIGHUP would leak a configuration.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from pygate.app import build_gateway
from pygate.config import load_data
from pygate.server import settle_heap


def config(url: str, path: str) -> dict[str, Any]:
    return {
        "gateway": {"listen": "127.0.0.1:0"},
        "upstreams": {"api": {"targets": [url]}},
        "routes": [{"name": "api", "path": path, "upstream": "api"}],
    }


@pytest.fixture
def unfreeze_afterwards() -> Iterator[None]:
    """The test process's heap goes back to normal after the test."""
    try:
        yield
    finally:
        gc.unfreeze()


async def test_a_replaced_gateway_is_collected_once_it_has_retired(
        pygate_gateway: Any, fake_upstream: Any, unfreeze_afterwards: None) -> None:
    up = await fake_upstream()
    gw = await pygate_gateway(config(up.url, "/old"))
    assert (await gw.request("GET", "/old/x"))[0] == 200
    running = gw.running

    class PluginState:  # what plugins keep often refers back to itself
        def __init__(self) -> None:
            self.me = self

    running.gateway.state["test"] = PluginState()
    state = weakref.ref(running.gateway.state["test"])
    settle_heap()  # after start, as pygate serve does
    fresh = build_gateway(load_data(config(up.url, "/new"), source="<test>", base_dir="."))
    await running.reload(fresh)
    assert (await gw.request("GET", "/new/x"))[0] == 200
    for _ in range(100):  # until the old gateway has stopped and the heap is settled again
        if not running.retiring and gc.get_freeze_count():
            break
        await asyncio.sleep(0.05)
    assert not running.retiring
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert state() is None  # the replaced gateway's state was collected
