"""The ``collector`` fixture: OTLP/HTTP receivers on loopback (otlp_collector.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from otlp_collector import Collector, CollectorFactory, start_collector


@pytest.fixture
async def collector() -> AsyncIterator[CollectorFactory]:
    """Factory fixture: ``receiver = await collector(mode="ok", delay=0.0)``."""
    started: list[Collector] = []

    async def factory(mode: str = "ok", delay: float = 0.0) -> Collector:
        receiver = await start_collector(mode, delay)
        started.append(receiver)
        return receiver

    yield factory
    for receiver in started:
        await receiver.close()
