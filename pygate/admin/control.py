"""How the admin listener reaches every worker: a private directory of control sockets.

With ``--workers N`` and ``[admin]``, the supervisor makes a private directory
(mode 0700) before it forks the first worker and removes it when it exits. In
it:

- ``worker-N.sock``: each worker's control socket, a Unix stream socket
  answering one JSON request line (``{"op": "stats"}``) with one JSON line
  (``{"ok": true, "result": ...}``, or ``{"ok": false, "status": 404,
  "detail": ...}``), then closing. Only the user running pygate can reach it
  (the directory's mode), so it needs no token.
- ``supervisor.json``: the supervisor's state, replaced atomically whenever it
  changes: its pid and start time, the configuration's generation, the count
  of reload attempts and the outcome of the last one, and each worker's pid
  and readiness.

Worker 1 serves the admin listener and asks the others through their sockets
(:class:`pygate.admin.node.ClusterNode`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ..errors import GatewayError

log = structlog.get_logger("pygate")

STATE_FILE = "supervisor.json"
ASK_TIMEOUT = 5.0  # seconds a worker has to answer one question
LINE_LIMIT = 16 * 1024 * 1024  # the largest answer read (a stats snapshot of many routes)


def make_run_dir() -> str:
    """A new private directory for the control sockets (short enough for their paths)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or len(base) > 60 or not os.path.isdir(base):
        base = None
    try:
        path = tempfile.mkdtemp(prefix="pygate-", dir=base)
    except OSError:
        path = tempfile.mkdtemp(prefix="pygate-", dir="/tmp")
    if len(path) > 80:  # a Unix socket path has at most 107 bytes
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="pygate-", dir="/tmp")
    return path


def socket_path(run_dir: str, worker: int) -> str:
    return os.path.join(run_dir, f"worker-{worker}.sock")


def write_state(run_dir: str, state: dict[str, Any]) -> None:
    """Replace ``supervisor.json`` atomically (readers never see half a file)."""
    final = os.path.join(run_dir, STATE_FILE)
    temporary = final + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(state, file, separators=(",", ":"))
    os.replace(temporary, final)


def read_state(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, STATE_FILE), encoding="utf-8") as file:
            found: dict[str, Any] = json.load(file)
            return found
    except (OSError, ValueError):
        return None


@dataclass
class Cluster:
    """What a worker knows of the others: its number, how many, its supervisor, the
    private directory (``None`` without ``[admin]``)."""

    worker: int
    workers: int
    supervisor: int
    run_dir: str | None = None

    def generation(self) -> int | None:
        """The generation of the configuration the supervisor validated last."""
        if self.run_dir is None:
            return None
        state = read_state(self.run_dir)
        return int(state["generation"]) if state is not None else None

    def state(self) -> dict[str, Any] | None:
        return read_state(self.run_dir) if self.run_dir is not None else None


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ControlServer:
    """A worker's control socket: ``handler(op, args)`` answers each request line."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by the worker this one replaces
        self.server = await asyncio.start_unix_server(self._serve, self.path, limit=LINE_LIMIT)

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), ASK_TIMEOUT)
            request = json.loads(line)
            try:
                result = await self.handler(str(request["op"]), dict(request.get("args") or {}))
                answer: dict[str, Any] = {"ok": True, "result": result}
            except GatewayError as exc:
                answer = {"ok": False, "status": exc.status, "detail": exc.detail,
                          "extra": exc.extra}
            except Exception as exc:
                log.exception("admin control request failed", op=request.get("op"))
                answer = {"ok": False, "status": 500,
                          "detail": f"worker failed: {type(exc).__name__}"}
            writer.write(json.dumps(answer, separators=(",", ":"), default=str).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, KeyError, TypeError, TimeoutError, asyncio.LimitOverrunError):
            pass  # a client that went away or spoke nonsense
        finally:
            writer.close()


async def ask(path: str, op: str, args: dict[str, Any] | None = None) -> Any:
    """Ask the worker at ``path``; its result.

    :raise GatewayError: the worker answered with a problem (its status and detail).
    :raise OSError: the worker is not there (its socket refuses or is missing).
    :raise TimeoutError: it did not answer within :data:`ASK_TIMEOUT` seconds.
    """
    async with asyncio.timeout(ASK_TIMEOUT):
        reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
        try:
            request = {"op": op, "args": args or {}}
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    if not line:
        raise ConnectionResetError("the worker closed its control socket")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise GatewayError(answer.get("detail", ""), status=int(answer.get("status", 500)),
                           extra=answer.get("extra") or None)
    return answer.get("result")


__all__ = [
    "STATE_FILE",
    "Cluster",
    "ControlServer",
    "ask",
    "make_run_dir",
    "read_state",
    "socket_path",
    "write_state",
]
