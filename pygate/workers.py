"""Several worker processes on one port: ``pygate serve --workers N`` (docs/operations.md).

The supervisor (the process ``pygate serve`` started, the configuration
already validated) binds one ``SO_REUSEPORT`` listening socket per worker slot
on the same address, so that the kernel spreads connections over them, and
forks one worker per slot; a worker serves its slot's socket with
:func:`pygate.server.serve_forever`, as a single-process gateway does
(:mod:`pygate.worker`: the slots and the worker's side).

- Binding in the supervisor fails ``serve`` (exit 1) before any worker exists,
  and ``--listen HOST:0`` gives every worker the same port.
- A slot's socket stays open while its worker is replaced, so connections
  queued for a worker that died wait for the replacement instead of being
  reset; during a crash-loop backoff it is closed (the kernel then uses the
  other sockets) and bound again at the restart.
- Forking starts a worker in milliseconds from the very configuration the
  supervisor validated. The supervisor runs no event loop and never starts
  the gateway's resources: each worker opens its own.

SIGTERM/SIGINT: close the sockets, SIGTERM every worker (each drains), SIGKILL
those still running after ``drain_timeout`` + :data:`KILL_GRACE`, exit 0.
SIGHUP: validate the file again; if valid, SIGHUP every worker (each reloads).
SIGUSR1: the same, asked for by ``POST /reload`` (logged with trigger ``admin``).
With ``--watch`` the supervisor also polls the files (:mod:`pygate.watch`)
and reloads the same way when they change.

With ``[admin]``, the supervisor binds the admin listener too and hands it to
worker 1 (and to its replacements), and makes a private directory where every
worker serves a control socket and the supervisor keeps its state
(:mod:`pygate.admin.control`), removed when it exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

import structlog

from .admin.control import Cluster, make_run_dir, write_state
from .app import Gateway
from .listener import bind
from .logs import log_format, set_log_format, set_process_fields
from .reload import Loader, validate, warn_restart_only
from .watch import POLL_INTERVAL, Watcher
from .worker import (
    BACKOFF_FIRST,
    STABLE_AFTER,
    MetricsFiles,
    Slot,
    restart_delay,
    run_worker,
    worker_count,
)

log = structlog.get_logger("pygate")

# After drain_timeout, how long a worker may still take to exit before SIGKILL.
KILL_GRACE = 2.0
# The supervisor's loop wakes at least this often, whatever it waits for.
TICK = 5.0

# SIGUSR1: a reload asked for through the admin listener (the worker serving it validated
# the file and signals the supervisor), logged with trigger "admin" rather than "signal".
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


class Supervisor:
    """Forks the workers, replaces those that exit, forwards signals, exits when all did."""

    def __init__(self, gateway: Gateway, host: str, port: int, count: int,
                 reload: Loader, *, admin_socks: list[socket.socket] | None = None,
                 watch: bool = False,
                 redirect_socks: list[socket.socket] | None = None) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.reload = reload
        self.drain_timeout = gateway.config.gateway.drain_timeout
        self.slots = [Slot(number) for number in range(1, count + 1)]
        self.generation = 1  # the configuration's number; one more per valid reload
        self.reloads = 0  # reload attempts, valid or not (the admin waits for the next)
        self.last_reload: dict[str, Any] | None = None
        self.admin_socks = admin_socks or []  # worker 1 serves the admin listener on them
        # gateway.redirect_http: one socket (not one per slot) that every worker serves
        self.redirect_socks = redirect_socks or []
        self.run_dir: str | None = None  # the control sockets' private directory
        self.started_at = time.time()
        self.metrics: MetricsFiles | None = None  # with the prometheus plugin
        self.watcher = Watcher(gateway.config.source, gateway.config) if watch else None
        self._next_poll = 0.0
        self.booted = False  # every worker has listened once
        self.stopping = False
        self.kill_at: float | None = None
        self.exit_code = 0
        self._signals: list[int] = []
        self._wake_r = self._wake_w = -1

    @classmethod
    def bind(cls, gateway: Gateway, host: str, port: int, count: int,
             reload: Loader, *, admin_socks: list[socket.socket] | None = None,
             watch: bool = False,
             redirect_socks: list[socket.socket] | None = None) -> Supervisor:
        """Bind every slot's sockets (OSError when the address cannot be bound)."""
        supervisor = cls(gateway, host, port, count, reload, admin_socks=admin_socks,
                         watch=watch, redirect_socks=redirect_socks)
        try:
            for slot in supervisor.slots:
                slot.socks = bind(host, supervisor.port, reuse_port=True)
                supervisor.port = slot.socks[0].getsockname()[1]
        except BaseException:
            for slot in supervisor.slots:
                slot.close_socks()
            raise
        return supervisor

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.gateway.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT and all of them have exited; the exit code."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        set_process_fields(supervisor=os.getpid())  # a worker replaces these
        try:
            log.info("supervisor started", url=self.url, workers=len(self.slots))
            if self.admin_socks:
                self.run_dir = make_run_dir()
                self._write_state()
            if "prometheus" in self.gateway.plugins.info:
                self.metrics = MetricsFiles.prepare()  # before the first fork
            if self.watcher is not None:
                log.info("watching for changes", files=self.watcher.files)
                self._next_poll = time.monotonic() + POLL_INTERVAL
            for slot in self.slots:
                self._spawn(slot)
            while self._alive():
                self._wait()
                self._handle_signals()
                self._reap()
                if self.stopping:
                    self._kill_stragglers()
                else:
                    self._poll_watch()
                    self._restart_due()
            log.info("stopped")
            return self.exit_code
        finally:
            for slot in self.slots:  # only after an error in the loop: workers drain alone
                self._signal(slot, signal.SIGTERM)
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            for slot in self.slots:
                slot.close_socks()
                slot.close_ready()
            self._close_admin()
            self._close_redirect()
            if self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            if self.metrics is not None:
                self.metrics.remove()

    def _close_admin(self) -> None:
        for sock in self.admin_socks:
            sock.close()
        self.admin_socks = []

    def _close_redirect(self) -> None:
        for sock in self.redirect_socks:
            sock.close()
        self.redirect_socks = []

    def _write_state(self) -> None:
        """What the admin listener reads of the supervisor (pygate.admin.control)."""
        if self.run_dir is None:
            return
        try:
            write_state(self.run_dir, {
                "pid": os.getpid(), "started": self.started_at, "generation": self.generation,
                "workers": len(self.slots), "reloads": self.reloads,
                "last_reload": self.last_reload, "stopping": self.stopping,
                "slots": [{"worker": s.number, "pid": s.pid, "ready": s.ready}
                          for s in self.slots],
            })
        except OSError as exc:
            log.warning("cannot write the supervisor's state", error=str(exc))

    def _alive(self) -> bool:
        return not self.stopping or any(slot.pid is not None for slot in self.slots)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _wait(self) -> None:
        """Sleep until a signal, a worker's readiness, or the next timer."""
        now = time.monotonic()
        timers = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self.kill_at is not None:
            timers.append(self.kill_at)
        if self.watcher is not None and not self.stopping:
            timers.append(self._next_poll)
        timeout = max(0.0, min([*timers, now + TICK]) - now)
        readers = {slot.ready_fd: slot for slot in self.slots if slot.ready_fd is not None}
        readable, _, _ = select.select([self._wake_r, *readers], [], [], timeout)
        for fd in readable:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                self._on_ready(readers[fd])

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._reload("signal")
            elif signum == signal.SIGUSR1:
                self._reload("admin")

    # -- workers -----------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        slot.restart_at = None
        if not slot.socks:
            try:
                slot.socks = bind(self.host, self.port, reuse_port=True)
            except OSError as exc:
                self._retry_later(slot, f"cannot listen on {self.url}: {exc.strerror or exc}")
                return
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals stay blocked across the fork until the child has set its own handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(ready_r)
            os.close(ready_w)
            self._retry_later(slot, f"cannot fork a worker: {exc.strerror or exc}")
            return
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                os.close(ready_r)
                code = self._become_worker(slot, ready_w, mask)
            except BaseException as exc:
                log.error("worker failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_w)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.ready = False
        slot.ready_fd = ready_r
        slot.generation = self.generation
        log.info("worker started", worker=slot.number, pid=pid)
        self._write_state()

    def _retry_later(self, slot: Slot, reason: str) -> None:
        slot.failures += 1
        delay = max(BACKOFF_FIRST, restart_delay(slot.failures))
        slot.restart_at = time.monotonic() + delay
        log.error("worker not started", worker=slot.number, reason=reason, retry_in_s=delay)

    def _become_worker(self, slot: Slot, ready_w: int, mask: Iterable[int]) -> int:
        """In the forked child: drop the supervisor's state, then serve the slot's sockets."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the event loop takes over
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # re-sent once the worker listens
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for other in self.slots:
            if other is not slot:
                other.close_socks()
            other.close_ready()
        admin_socks = self.admin_socks if slot.number == 1 else []
        if slot.number != 1:
            self._close_admin()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        set_process_fields(worker=slot.number, pid=os.getpid())
        cluster = Cluster(slot.number, len(self.slots), os.getppid(), self.run_dir)
        return run_worker(self.gateway, self.host, self.port, slot.socks, ready_w,
                          supervisor=os.getppid(), reload=self.reload,
                          admin_socks=admin_socks, cluster=cluster,
                          generation=self.generation, redirect_socks=self.redirect_socks)

    def _on_ready(self, slot: Slot) -> None:
        assert slot.ready_fd is not None
        try:
            data = os.read(slot.ready_fd, 16)
        except OSError:
            data = b""
        slot.close_ready()
        if not data:
            return  # the worker exited before listening: _reap deals with it
        slot.ready = True
        if slot.generation != self.generation:  # forked before the last reload
            self._signal(slot, signal.SIGHUP)
            slot.generation = self.generation
        if not self.booted and all(s.ready for s in self.slots):
            self.booted = True
            log.info("workers ready", url=self.url, workers=len(self.slots),
                     pids=[s.pid for s in self.slots])
        self._write_state()

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.pid is None:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0
            if pid:
                self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: Slot, code: int) -> None:
        pid, uptime, was_ready = slot.pid, time.monotonic() - slot.started, slot.ready
        slot.pid = None
        slot.ready = False
        slot.close_ready()
        status = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        self._write_state()
        if self.metrics is not None and pid is not None:
            self.metrics.worker_exited(pid)
        if self.stopping:
            log.info("worker exited", worker=slot.number, pid=pid, status=status)
            return
        log.warning("worker exited unexpectedly", worker=slot.number, pid=pid, status=status,
                    uptime_s=round(uptime, 3))
        if not self.booted and not was_ready:
            log.error("worker failed to start; stopping", worker=slot.number)
            self.exit_code = 1
            self._stop("startup failure")
            return
        if uptime >= STABLE_AFTER:
            slot.failures = 0
        slot.failures += 1
        delay = restart_delay(slot.failures)
        if delay:
            # Nobody accepts on this slot meanwhile: let the kernel use the other sockets.
            slot.close_socks()
            slot.restart_at = time.monotonic() + delay
            log.warning("worker restarts after a delay", worker=slot.number, delay_s=delay,
                        failures=slot.failures)
        else:
            self._spawn(slot)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and slot.restart_at is not None and slot.restart_at <= now:
                self._spawn(slot)

    def _signal(self, slot: Slot, signum: int) -> None:
        if slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signum)

    # -- stop and reload ---------------------------------------------------

    def _stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.kill_at = time.monotonic() + self.drain_timeout + KILL_GRACE
        for slot in self.slots:
            slot.close_socks()  # no new connection is queued from now on
            slot.restart_at = None
            self._signal(slot, signal.SIGTERM)
        self._close_admin()  # worker 1 keeps its copy until its drain is over
        self._close_redirect()  # and every worker its copy of these
        self._write_state()
        log.info("draining", reason=reason, timeout_s=self.drain_timeout,
                 workers=[s.pid for s in self.slots if s.pid is not None])

    def _kill_stragglers(self) -> None:
        if self.kill_at is None or time.monotonic() < self.kill_at:
            return
        self.kill_at = None
        for slot in self.slots:
            if slot.pid is not None:
                log.warning("worker still running after the drain; killing it",
                            worker=slot.number, pid=slot.pid)
                self._signal(slot, signal.SIGKILL)

    def _poll_watch(self) -> None:
        watcher = self.watcher
        now = time.monotonic()
        if watcher is None or now < self._next_poll:
            return
        self._next_poll = now + POLL_INTERVAL
        changed = watcher.poll()
        if changed:
            log.info("configuration changed on disk", files=changed)
            self._reload("watch")

    def _reload(self, trigger: str) -> None:
        if self.stopping:
            return
        gateway, errors = validate(self.reload, trigger=trigger)
        self.reloads += 1
        if gateway is None:
            self.last_reload = {"ok": False, "generation": self.generation, "errors": errors}
            self._write_state()
            return
        warn_restart_only(self.gateway, gateway)
        self.gateway = gateway
        self.drain_timeout = gateway.config.gateway.drain_timeout
        self.generation += 1
        gateway.generation = self.generation  # the workers forked from now on
        self.last_reload = {"ok": True, "generation": self.generation, "errors": []}
        set_log_format(log_format(gateway))
        if self.watcher is not None:
            self.watcher.rebase(gateway.config, keep=trigger == "watch")
        self._write_state()  # before the signals: workers read the generation from it
        signalled = []
        for slot in self.slots:
            if slot.pid is not None and slot.ready:
                self._signal(slot, signal.SIGHUP)
                slot.generation = self.generation
                signalled.append(slot.pid)
        log.info("reload validated; workers signalled", workers=signalled,
                 generation=self.generation)


__all__ = ["KILL_GRACE", "Supervisor", "restart_delay", "run_worker", "worker_count"]
