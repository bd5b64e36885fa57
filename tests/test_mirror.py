"""The bound and the counts of mirror copies (pygate.mirror.Copies), and how the admin
listener adds up several workers' counts."""

from __future__ import annotations

import asyncio
import time

from pygate.admin.views import merge_upstreams
from pygate.mirror import Copies


def test_copies_beyond_the_limit_are_dropped_and_counted() -> None:
    copies = Copies("shadow", limit=2)
    assert [copies.reserve() for _ in range(5)] == [True, True, False, False, False]
    assert copies.describe() == {"limit": 2, "in_flight": 2, "sent": 0, "failed": 0,
                                 "dropped": 3, "too_large": 0}
    copies.release()
    assert copies.reserve() is True
    assert copies.describe()["in_flight"] == 2


async def test_settle_waits_a_short_bound_then_cuts_the_copies() -> None:
    copies = Copies("shadow", limit=4)
    finished = asyncio.Event()
    cut: list[bool] = []

    async def quick() -> None:
        await asyncio.sleep(0.01)
        finished.set()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cut.append(True)
            raise

    for work in (quick(), stuck()):
        task = asyncio.get_running_loop().create_task(work)
        copies.tasks.add(task)
        task.add_done_callback(copies.tasks.discard)
    started = time.monotonic()
    await copies.settle(within=0.3)
    took = time.monotonic() - started
    assert finished.is_set() and cut == [True]
    assert 0.25 < took < 1.5
    assert not copies.tasks
    await copies.settle(within=5)  # nothing left: returns at once
    assert time.monotonic() - started < 1.5


def test_the_admin_adds_up_every_workers_mirror_counts() -> None:
    def table(in_flight: int, dropped: int) -> list[dict[str, object]]:
        return [{"name": "shadow", "balancer": "round-robin", "health_checks": False,
                 "breaker_enabled": False,
                 "targets": [{"target": "http://127.0.0.1:9", "weight": 1, "healthy": True,
                              "breaker": "closed", "active": in_flight}],
                 "mirror": {"limit": 2, "in_flight": in_flight, "sent": 5, "failed": 1,
                            "dropped": dropped, "too_large": 0}},
                {"name": "users", "balancer": "round-robin", "health_checks": False,
                 "breaker_enabled": False, "targets": []}]

    merged = merge_upstreams([(0, table(1, 3)), (1, table(2, 4))])
    shadow = next(up for up in merged if up["name"] == "shadow")
    assert shadow["mirror"] == {"limit": 4, "in_flight": 3, "sent": 10, "failed": 2,
                                "dropped": 7, "too_large": 0}
    assert shadow["targets"][0]["active"] == 3
    users = next(up for up in merged if up["name"] == "users")
    assert "mirror" not in users
