"""Single flight: concurrent misses for one key make one upstream call.

The first miss for a key becomes the *leader*: it registers a future and goes
to the upstream. Later misses for the same key find the future and wait on it.
The leader settles it with what it stored (or ``None`` when the response was
not storable, or the request failed), and every waiter is answered from that,
or goes to the upstream itself on ``None``. A flight lives in one process;
gateway nodes do not coordinate their misses.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The misses in progress of one event loop, by cache key."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T | None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join_or_lead(self, key: str) -> tuple[bool, asyncio.Future[T | None]]:
        """``(True, future)`` for the leader of a new flight, ``(False, future)`` to wait."""
        found = self._flights.get(key)
        if found is not None:
            return False, found
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return True, future

    def waiting(self, key: str) -> asyncio.Future[T | None] | None:
        """The flight in progress for ``key``, without starting one."""
        return self._flights.get(key)

    @staticmethod
    def settle(future: asyncio.Future[T | None], value: T | None) -> None:
        """Give the waiters their answer (only the first call counts)."""
        if not future.done():
            future.set_result(value)

    def end(self, key: str, future: asyncio.Future[T | None]) -> None:
        """Close the flight: waiters still waiting get ``None``; new misses lead anew."""
        self.settle(future, None)
        if self._flights.get(key) is future:
            del self._flights[key]

    @staticmethod
    async def wait(future: asyncio.Future[T | None], deadline: float) -> T | None:
        """The leader's result, or ``None`` when it failed or is not done by ``deadline``.

        :param deadline: loop time (``loop.time()``) after which the waiter gives up.
        """
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(future)
        except TimeoutError:
            return None
