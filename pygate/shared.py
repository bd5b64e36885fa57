"""State a plugin shares between the gateways running on one event loop.

A plugin's pools and in-memory stores (rate-limit counters, cache entries)
should outlive a reload, where a new gateway starts on the same loop before the
old one stops. :class:`PerLoop` keeps one object per event loop, counts the
gateways using it (``acquire`` when one starts, ``release`` when it stops) and
closes it when the last one lets go.

Plugins do not keep their own module-level ``PerLoop``: they call
:meth:`pygate.plugin.Gateway.shared` in ``startup``, which acquires the plugin's
object from :data:`SHARED` (one ``PerLoop`` per plugin name and factory, kept
here by the core) and has the core release it after the plugin's ``shutdown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar


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

    @property
    def factory(self) -> Callable[[], T]:
        """What makes the object of a loop."""
        return self._factory

    @property
    def idle(self) -> bool:
        """No loop holds an object (every user released it)."""
        return not self._objects and not self._users


class SharedObjects:
    """The per-event-loop objects of every plugin, by plugin name and factory.

    What :meth:`pygate.plugin.Gateway.shared` hands out. A ``PerLoop`` that no
    loop uses any more is dropped, so a factory made afresh per call (a lambda)
    costs nothing lasting (and shares nothing either).
    """

    def __init__(self) -> None:
        self._table: dict[tuple[str, Callable[[], Any]], PerLoop[Any]] = {}

    def acquire(self, plugin: str, factory: Callable[[], T]) -> tuple[PerLoop[T], T]:
        """Count a user of ``plugin``'s object on the running loop; return both."""
        key = (plugin, factory)
        per_loop: PerLoop[T] | None = self._table.get(key)
        if per_loop is None:
            per_loop = self._table[key] = PerLoop(factory)
        return per_loop, per_loop.acquire()

    async def release(self, plugin: str, per_loop: PerLoop[Any]) -> None:
        """Uncount a user; the last user on the loop closes the object."""
        try:
            await per_loop.release()
        finally:
            if per_loop.idle:
                key = (plugin, per_loop.factory)
                if self._table.get(key) is per_loop:
                    del self._table[key]


SHARED = SharedObjects()
"""The one table of per-loop plugin objects (the core's; plugins go through the facade)."""

__all__ = ["SHARED", "Closable", "PerLoop", "SharedObjects"]
