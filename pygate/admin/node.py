"""The node the admin listener speaks for: one process, or a supervisor's workers.

:class:`SingleNode` (``--workers 1``): the process itself answers everything
and reloads through its :class:`pygate.reload.Reloader`.

:class:`ClusterNode` (``--workers N``, in worker 1, which serves the admin
listener): per-worker answers (status, upstreams, stats, cache purge) are
gathered from every worker's control socket (:mod:`.control`) and merged; a
reload is validated here first, then the supervisor is sent SIGUSR1 (it
validates again, logging trigger "admin", and signals every worker), and the
answer waits until every worker serves the supervisor's new generation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import structlog

from ..errors import BadRequest, GatewayError, GatewayTimeout
from ..reload import Errors, check, log_refused
from .control import Cluster, ask, socket_path
from .local import Local

log = structlog.get_logger("pygate")

RELOAD_WITHIN = 30.0  # seconds for every worker to serve a new configuration
POLL = 0.05

Answers = list[tuple[int, Any]]  # (worker number, its answer)


def refused(errors: Errors) -> GatewayError:
    return BadRequest("the configuration is invalid; the running configuration stays",
                      extra={"errors": errors})


class SingleNode:
    """One process serving alone."""

    def __init__(self, local: Local) -> None:
        self.local = local

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def started(self) -> float:
        return self.local.started

    @property
    def workers(self) -> int:
        return 1

    @property
    def stopping(self) -> bool:
        return False

    def generation(self) -> int | None:
        running = self.local.running
        return running.generation if running is not None else None

    async def gather(self, op: str, args: dict[str, Any] | None = None
                     ) -> tuple[Answers, list[int]]:
        """Every process's answer to ``op``, and the workers that did not answer."""
        return [(self.local.worker, await self.local.handle(op, args or {}))], []

    async def reload(self) -> dict[str, Any]:
        """Reload; ``{"generation": N}`` once it serves.

        :raise GatewayError: 400 with ``errors`` when the file is invalid (or the new
            configuration did not start); the running configuration stays.
        """
        reloader = self.local.reloader
        if reloader is None:
            raise GatewayError("the gateway is starting", status=503)
        outcome = await reloader.reload("admin")
        if outcome.failed is not None:
            raise refused([{"path": "", "message": "the configuration validated but did not "
                            f"start: {outcome.failed}"}])
        if not outcome.ok:
            raise refused(outcome.errors)
        return {"generation": outcome.generation}

    async def close(self) -> None:
        pass


class ClusterNode(SingleNode):
    """Worker 1 speaking for every worker of its supervisor."""

    def __init__(self, local: Local, cluster: Cluster) -> None:
        super().__init__(local)
        assert cluster.run_dir is not None
        self.cluster = cluster
        self.run_dir = cluster.run_dir
        self._lock = asyncio.Lock()

    def _state(self) -> dict[str, Any]:
        return self.cluster.state() or {}

    @property
    def pid(self) -> int:
        return self.cluster.supervisor

    @property
    def started(self) -> float:
        return float(self._state().get("started", self.local.started))

    @property
    def workers(self) -> int:
        return self.cluster.workers

    @property
    def stopping(self) -> bool:
        return bool(self._state().get("stopping"))

    def generation(self) -> int | None:
        found = self._state().get("generation")
        return int(found) if found is not None else super().generation()

    async def gather(self, op: str, args: dict[str, Any] | None = None
                     ) -> tuple[Answers, list[int]]:
        numbers = range(1, self.cluster.workers + 1)

        async def one(worker: int) -> Any:
            if worker == self.local.worker:
                return await self.local.handle(op, args or {})
            return await ask(socket_path(self.run_dir, worker), op, args)

        results = await asyncio.gather(*(one(n) for n in numbers), return_exceptions=True)
        answers: Answers = []
        missing: list[int] = []
        for worker, result in zip(numbers, results, strict=True):
            if isinstance(result, GatewayError):
                raise result  # every worker has the same configuration: one answer will do
            if isinstance(result, BaseException):
                log.debug("admin: a worker did not answer", worker=worker, op=op,
                          error=f"{type(result).__name__}: {result}")
                missing.append(worker)
            else:
                answers.append((worker, result))
        return answers, missing

    async def reload(self) -> dict[str, Any]:
        """Validate here, signal the supervisor (SIGUSR1), wait for every worker's new
        generation."""
        async with self._lock:
            reloader = self.local.reloader
            if reloader is None or reloader.load is None:
                raise GatewayError("the gateway is starting", status=503)
            gateway, file, errors = check(reloader.load)
            if gateway is None:
                log_refused(file, errors)
                raise refused(errors)
            del gateway  # validated only: each worker loads the file itself
            before = int(self._state().get("reloads", 0))
            os.kill(self.cluster.supervisor, signal.SIGUSR1)  # the supervisor's "admin" reload
            deadline = time.monotonic() + RELOAD_WITHIN
            while int((state := self._state()).get("reloads", 0)) <= before:
                if time.monotonic() > deadline:
                    raise GatewayTimeout("the supervisor did not take the reload in time")
                await asyncio.sleep(POLL)
            last = state.get("last_reload") or {}
            if not last.get("ok"):
                raise refused(list(last.get("errors") or []))
            target = int(last["generation"])
            await self._wait_for(target, deadline)
            return {"generation": target}

    async def _wait_for(self, generation: int, deadline: float) -> None:
        """Until every running worker serves ``generation`` (or a later one)."""
        while True:
            answers, missing = await self.gather("status")
            live = sum(1 for slot in self._state().get("slots", []) if slot.get("pid"))
            behind = [{"worker": w, "generation": a["generation"]} for w, a in answers
                      if (a["generation"] or 0) < generation]
            if not behind and len(answers) >= live:
                return
            if time.monotonic() > deadline:
                raise GatewayTimeout(f"not every worker serves generation {generation} yet",
                                     extra={"behind": behind, "missing": missing})
            await asyncio.sleep(POLL)


__all__ = ["ClusterNode", "SingleNode"]
