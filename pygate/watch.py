"""``pygate serve --watch``: reload when the configuration file, or a file it names, changes.

Polling, no dependency: every :data:`POLL_INTERVAL` the watcher takes each
watched path's signature, ``(real path, device, inode, mtime in ns, size)``
through every symbolic link, so that an edit in place, an editor's
write-and-rename, and a Kubernetes ConfigMap update (which swaps the mounted
folder's ``..data`` symbolic link to a new directory) all change it. A change
is acted on once the signatures have stayed the same for :data:`DEBOUNCE`
seconds (an editor writing in several steps makes one reload), and the reload
itself validates first: an invalid change is refused and logged, and the
running configuration stays.

The watched files are the configuration file and every file its string values
name (relative paths are relative to the configuration file's folder): a JWT
``public_key`` file, a GraphQL ``schema``, a ``keys_file``, an OpenAPI
document... Values under a key named ``path`` are not followed (route and
health-check paths are URL paths, and the ``logging`` plugin's ``path`` is the
access log it writes). After each reload the list is taken again from the new
configuration.

The watcher itself is synchronous (a few ``stat`` calls): a single process
polls it from a task (:func:`watch_and_reload`), the workers' supervisor from
its own loop (:mod:`pygate.workers`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from .config import Config

if TYPE_CHECKING:
    from .reload import Reloader

log = structlog.get_logger("pygate")

POLL_INTERVAL = 0.25
DEBOUNCE = 0.5
SKIPPED_KEYS = frozenset({"path"})
"""Keys whose values are never taken for files (URL paths; the access log's own file)."""

Signature = tuple[str, int, int, int, int] | None


def signature(path: str) -> Signature:
    """What tells a change of the file at ``path`` (followed through symbolic links);
    ``None`` when it is missing or unreadable."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, ValueError):
        return None
    return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _strings(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for name, item in value.items():
            if str(name) not in SKIPPED_KEYS:
                yield from _strings(item, str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield value


def _as_file(value: str, base_dir: str) -> str | None:
    if not value or len(value) > 4096 or "\n" in value or "\0" in value or "://" in value:
        return None
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    try:
        return os.path.abspath(path) if os.path.isfile(path) else None
    except (OSError, ValueError):
        return None


def named_files(config: Config) -> list[str]:
    """The existing files the configuration's string values name (absolute paths)."""
    found: dict[str, None] = {}
    for value in _strings(config.model_dump(by_alias=True)):
        path = _as_file(value, config.base_dir)
        if path is not None:
            found[path] = None
    return list(found)


class Watcher:
    """The configuration file and the files it names; :meth:`poll` tells a settled change."""

    def __init__(self, config_file: str, config: Config | None, *,
                 debounce: float = DEBOUNCE, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.config_file = os.path.abspath(config_file)
        self.debounce = debounce
        self.clock = clock
        self._base: dict[str, Signature] = {}
        self._seen: dict[str, Signature] | None = None  # a change waiting to settle
        self._since = 0.0
        self.rebase(config)

    @property
    def files(self) -> list[str]:
        """Every watched path (the configuration file first)."""
        return list(self._base)

    def rebase(self, config: Config | None, *, keep: bool = False) -> None:
        """Watch the files of ``config`` (the one now serving) from now on.

        With ``keep``, files already watched keep the signature they had when the
        change that led to this configuration was seen, so that a change made while
        the reload ran is still noticed; other files start from what they are now.
        """
        paths = [self.config_file, *(named_files(config) if config is not None else [])]
        old = self._base if keep else {}
        self._base = {p: old[p] if p in old else signature(p) for p in dict.fromkeys(paths)}
        self._seen = None

    def poll(self) -> list[str] | None:
        """The files that changed, once the change has settled for ``debounce`` seconds;
        else None."""
        current = {path: signature(path) for path in self._base}
        if current == self._base:
            self._seen = None
            return None
        now = self.clock()
        if current != self._seen:
            self._seen = current  # (still) changing: wait until it settles
            self._since = now
            return None
        if now - self._since < self.debounce:
            return None
        changed = [path for path, sig in current.items() if sig != self._base[path]]
        self._base = current
        self._seen = None
        return changed


async def watch_and_reload(watcher: Watcher, reloader: Reloader, *,
                           interval: float = POLL_INTERVAL) -> None:
    """Poll ``watcher`` and reload on each settled change (a single process's task)."""
    reloader.listeners.append(
        lambda gateway, trigger: watcher.rebase(gateway.config, keep=trigger == "watch"))
    log.info("watching for changes", files=watcher.files)
    while True:
        await asyncio.sleep(interval)
        changed = watcher.poll()
        if changed:
            log.info("configuration changed on disk", files=changed)
            await reloader.reload("watch")


__all__ = ["DEBOUNCE", "POLL_INTERVAL", "Watcher", "named_files", "signature",
           "watch_and_reload"]
