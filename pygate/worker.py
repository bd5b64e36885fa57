"""One worker of ``pygate serve --workers N``: its slot, its restarts, its life after the fork.

The supervisor (:mod:`pygate.workers`) keeps a :class:`Slot` per worker position
(its listening sockets and its current process) and restarts a worker that
exits, with :func:`restart_delay` when it crash-loops. In the forked child,
:func:`run_worker` serves the slot's sockets with
:func:`pygate.server.serve_forever` until SIGTERM, or until the supervisor is
gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field

import structlog

from .admin.control import Cluster
from .app import Gateway
from .reload import Loader
from .server import Running, serve_forever

log = structlog.get_logger("pygate")

# A worker that ran at least this long before it exited is restarted at once.
STABLE_AFTER = 5.0
# Restart delays of a crash-looping slot: none for the first exit, then 0.5s, 1s, 2s ... 30s.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# How often a worker checks that its supervisor is still alive.
PARENT_POLL = 1.0


def worker_count(value: int | str) -> int:
    """``--workers``/``gateway.workers`` as a number: ``"auto"`` is one per CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f'expected a number >= 1 or "auto", found {value!r}')


def restart_delay(failures: int) -> float:
    """Seconds before restarting a slot whose worker exited ``failures`` times in a row.

    An exit after :data:`STABLE_AFTER` seconds of service resets the count, so a
    worker that crashes once in a while is always replaced at once.
    """
    if failures <= 1:
        return 0.0
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 2))


@dataclass(eq=False)
class Slot:
    """One worker position: its sockets and its current process."""

    number: int
    socks: list[socket.socket] = field(default_factory=list)
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    ready_fd: int | None = None  # the worker writes one byte on it once it listens
    generation: int = 0  # the configuration the worker runs (counts valid reloads)
    failures: int = 0
    restart_at: float | None = None

    def close_socks(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []

    def close_ready(self) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None


class MetricsFiles:
    """prometheus-client's multiprocess mode, for the ``prometheus`` plugin with workers.

    What the plugin's README asks of the supervisor (without importing the plugin,
    nor prometheus-client): before the first fork, a private empty directory (in
    memory, ``/dev/shm``, where there is one) as ``PROMETHEUS_MULTIPROC_DIR`` for
    the workers, or the operator's own, emptied of old ``*.db`` files; for each
    worker that exits, its live gauges out of the sums; at exit, the directory made
    here goes.
    """

    ENV = "PROMETHEUS_MULTIPROC_DIR"

    def __init__(self, path: str, made: bool) -> None:
        self.path = path
        self.made = made

    @classmethod
    def prepare(cls) -> MetricsFiles:
        given = os.environ.get(cls.ENV)
        if given:
            os.makedirs(given, exist_ok=True)
            for old in glob.glob(os.path.join(given, "*.db")):
                os.remove(old)
            return cls(given, False)
        memory = "/dev/shm"
        base = memory if os.path.isdir(memory) and os.access(memory, os.W_OK) else None
        path = tempfile.mkdtemp(prefix="pygate-metrics-", dir=base)
        os.environ[cls.ENV] = path
        return cls(path, True)

    def worker_exited(self, pid: int) -> None:
        for live in glob.glob(os.path.join(self.path, f"gauge_live*_{pid}.db")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(live)

    def remove(self) -> None:
        if self.made:
            shutil.rmtree(self.path, ignore_errors=True)


def run_worker(gateway: Gateway, host: str, port: int, socks: list[socket.socket],
               ready_w: int, *, supervisor: int, reload: Loader,
               admin_socks: list[socket.socket] | None = None, cluster: Cluster | None = None,
               generation: int = 1, redirect_socks: list[socket.socket] | None = None) -> int:
    """A worker's life: serve ``socks`` until SIGTERM (or the supervisor is gone); exit code.

    Worker 1 gets ``admin_socks`` and serves the admin listener; with ``cluster``
    (and its private directory) every worker answers on its control socket.
    Every worker serves ``redirect_socks`` (``gateway.redirect_http``), shared by all.
    """

    def ready(running: Running) -> None:
        with contextlib.suppress(OSError):
            os.write(ready_w, b"r")
        os.close(ready_w)

    async def watch_supervisor() -> None:
        # Nothing to await: an orphan only learns it by asking for its parent.
        while os.getppid() == supervisor:  # noqa: ASYNC110
            await asyncio.sleep(PARENT_POLL)
        log.warning("supervisor gone; draining")
        os.kill(os.getpid(), signal.SIGTERM)

    async def main() -> None:
        watcher = asyncio.get_running_loop().create_task(watch_supervisor())
        try:
            await serve_forever(gateway, host, port, socks=socks, on_ready=ready, reload=reload,
                                admin_socks=admin_socks or (), cluster=cluster,
                                generation=generation, redirect_socks=redirect_socks or [])
        finally:
            watcher.cancel()

    try:
        asyncio.run(main())
    except Exception as exc:
        log.error("worker failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return 1
    return 0


__all__ = ["PARENT_POLL", "MetricsFiles", "Slot", "restart_delay", "run_worker",
           "worker_count"]
