"""State a plugin shares between the gateways running on one event loop.

A plugin's pools and in-memory stores (rate-limit counters, cache entries)
should outlive a reload, where a new gateway starts on the same loop before the
old one stops. :class:`PerLoop` keeps one object per event loop, counts the
gateways using it (``acquire`` in ``startup``, ``release`` in ``shutdown``) and
closes it when the last one lets go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> Awaitable[None]: ...


T = TypeVar("T", bound=Closable)


class PerLoop(Generic[T]):
    """One ``factory()`` object per event loop, closed by its last user."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._objects: dict[asyncio.AbstractEventLoop, T] = {}
        self._users: dict[asyncio.AbstractEventLoop, int] = {}

    def get(self) -> T:
        """The running loop's object (made on first use)."""
        loop = asyncio.get_running_loop()
        found = self._objects.get(loop)
        if found is None:
            found = self._objects[loop] = self._factory()
        return found

    def acquire(self) -> T:
        """Count a user (a starting gateway) and return the loop's object."""
        found = self.get()
        loop = asyncio.get_running_loop()
        self._users[loop] = self._users.get(loop, 0) + 1
        return found

    async def release(self) -> None:
        """Uncount a user; the last one closes the object."""
        loop = asyncio.get_running_loop()
        users = self._users.get(loop, 0) - 1
        if users > 0:
            self._users[loop] = users
            return
        self._users.pop(loop, None)
        found = self._objects.pop(loop, None)
        if found is not None:
            await found.close()
