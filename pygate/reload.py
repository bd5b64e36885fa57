"""Reloading the configuration of a running gateway: SIGHUP, ``POST /reload``, ``--watch``.

Every route to a reload goes through one :class:`Reloader` per process, so
reloads never overlap: the file is read and validated again (plugins
included); an invalid one is refused with every error's key path and the
running configuration stays; a valid one is started, then swapped in by
:meth:`pygate.server.Running.reload` (new requests use it, in-flight ones
finish on the old one). Each valid configuration a process loads gets the next
*generation* number (the first one is 1); with workers the supervisor numbers
them and each worker takes the supervisor's number.

Lifecycle log lines: ``reloading`` (with ``trigger``: ``signal``, ``admin`` or
``watch``), then ``reloaded`` (with ``generation``), ``reload refused`` (with
``file`` and ``errors``) or ``reload failed`` (valid, but did not start).
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from .app import Gateway, load_gateway
from .config import ConfigError

if TYPE_CHECKING:
    from .server import Running

log = structlog.get_logger("pygate")

Loader = Callable[[], Gateway]
"""Reads and validates the configuration again (raises ConfigError): a reload's source."""

Errors = list[dict[str, str]]
"""A refused configuration's problems: ``{"path": key path, "message": ...}`` each."""

_DIGESTS: weakref.WeakKeyDictionary[Gateway, str] = weakref.WeakKeyDictionary()


def file_loader(path: str) -> Loader:
    """The loader of the configuration file ``path``: it also notes the file's sha256."""

    def load_file() -> Gateway:
        digest = file_sha256(path)
        gateway = load_gateway(path)
        if digest is not None:
            _DIGESTS[gateway] = digest
        return gateway

    return load_file


def file_sha256(path: str) -> str | None:
    """The hex sha256 of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None


def digest_of(gateway: Gateway) -> str | None:
    """The sha256 of the file ``gateway`` was loaded from, as read when it was loaded."""
    return _DIGESTS.get(gateway)


def check(load_config: Loader) -> tuple[Gateway | None, str, Errors]:
    """Read and validate the configuration: (the gateway or None, the file, the errors).

    Logs nothing: :func:`validate` is the logging form.
    """
    try:
        return load_config(), "", []
    except ConfigError as exc:
        return None, exc.file, [{"path": i.path, "message": i.message} for i in exc.issues]
    except Exception as exc:
        return None, "", [{"path": "", "message": f"{type(exc).__name__}: {exc}"}]


def validate(load_config: Loader, *, trigger: str = "signal") -> tuple[Gateway | None, Errors]:
    """:func:`check`, logging ``reloading`` and, when invalid, ``reload refused``."""
    log.info("reloading", trigger=trigger)
    gateway, file, errors = check(load_config)
    if gateway is None:
        log_refused(file, errors)
    return gateway, errors


def log_refused(file: str, errors: Errors) -> None:
    """``reload refused``, each error as ``key.path: message`` (or the message alone)."""
    lines = [f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errors]
    if file:
        log.error("reload refused", file=file, errors=lines)
    else:
        log.error("reload refused", errors=lines)


def warn_restart_only(old: Gateway, new: Gateway) -> None:
    """Log the settings a reload cannot apply (listening sockets, the worker count)."""
    before, after = old.config.gateway, new.config.gateway
    for key in ("listen", "workers", "redirect_http"):
        if getattr(before, key) != getattr(after, key):
            log.warning("setting changed; it takes effect at the next restart",
                        key=f"gateway.{key}", running=getattr(before, key),
                        configured=getattr(after, key))
    admin_before = old.config.admin.listen if old.config.admin is not None else None
    admin_after = new.config.admin.listen if new.config.admin is not None else None
    if admin_before != admin_after:
        log.warning("setting changed; it takes effect at the next restart",
                    key="admin.listen", running=admin_before, configured=admin_after)


@dataclass
class Outcome:
    """What a reload did: ``ok`` (the new configuration serves), the generation serving,
    and why not (``errors`` when refused, ``failed`` when it did not start)."""

    ok: bool
    generation: int
    errors: Errors = field(default_factory=list)
    failed: str | None = None


Listener = Callable[[Gateway, str], None]
"""Told of each configuration swapped in: (the new gateway, the trigger)."""


class Reloader:
    """One process's reloads, one at a time (SIGHUP, ``POST /reload``, ``--watch``).

    :param load_config: the configuration's loader; ``None`` when there is no file to
        read again (a reload is then refused).
    :param generation: where a worker reads the number of the configuration its
        supervisor validated (``None``: count locally).
    """

    def __init__(self, running: Running, load_config: Loader | None, *,
                 generation: Callable[[], int | None] | None = None) -> None:
        self.running = running
        self.load = load_config
        self.generation = generation
        self.listeners: list[Listener] = []
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> Outcome:
        """Read, validate and swap in the configuration; what happened."""
        async with self._lock:
            running = self.running
            if self.load is None:
                log.warning("reload ignored: no configuration file to reload", trigger=trigger)
                return Outcome(False, running.generation,
                               [{"path": "", "message": "no configuration file to reload"}])
            number = self.generation() if self.generation is not None else None
            gateway, errors = validate(self.load, trigger=trigger)
            if gateway is None:
                return Outcome(False, running.generation, errors)
            warn_restart_only(running.gateway, gateway)
            try:
                await running.reload(gateway, generation=number)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.error("reload failed: the new configuration did not start", error=reason,
                          exc_info=exc)
                return Outcome(False, running.generation, failed=reason)
            for listener in self.listeners:  # the log format first: "reloaded" is in it
                try:
                    listener(gateway, trigger)
                except Exception:
                    log.exception("reload listener failed")
            log.info("reloaded", file=gateway.config.source, routes=len(gateway.router.routes),
                     generation=running.generation, trigger=trigger)
            return Outcome(True, running.generation)


__all__ = [
    "Errors",
    "Loader",
    "Outcome",
    "Reloader",
    "check",
    "digest_of",
    "file_loader",
    "file_sha256",
    "log_refused",
    "validate",
    "warn_restart_only",
]
