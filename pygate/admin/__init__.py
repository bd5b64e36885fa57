"""The admin listener (``[admin]``): status, routes, upstreams, plugins, metrics, reload,
cache purge, per-route stats, probes and the dashboard, on a socket of its own.

One listener however many workers (docs/operations.md, "The admin listener"):
a single process serves it itself; with ``--workers N`` the supervisor binds
it and worker 1 serves it, asking the other workers through control sockets
in a private directory (:mod:`.control`).

The package, by concern: :mod:`.app` (the HTTP endpoints), :mod:`.node` (one
process or a supervisor's workers), :mod:`.local` (this process's answers),
:mod:`.views` (what a gateway shows), :mod:`.stats` (per-route counters),
:mod:`.control` (the control sockets).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from ..app import Gateway
from .app import make_app
from .control import Cluster, ControlServer, socket_path
from .local import Local
from .node import ClusterNode, SingleNode

if TYPE_CHECKING:
    from ..reload import Reloader
    from ..server import Running

log = structlog.get_logger("pygate")

CLOSE_WITHIN = 1.0  # seconds open admin requests get at shutdown


class AdminServer:
    """This process's admin side: the HTTP listener (if it holds the admin socket)
    and, in a worker, its control socket."""

    def __init__(self, local: Local, node: SingleNode) -> None:
        self.local = local
        self.node = node
        self.runner: web.AppRunner | None = None
        self.control: ControlServer | None = None

    @classmethod
    async def open(cls, socks: Sequence[socket.socket], cluster: Cluster | None,
                   gateway: Gateway) -> AdminServer:
        """Serve the admin listener on ``socks`` (if any) and the control socket (in a
        worker with a private directory); ``/ready`` answers 503 until :meth:`attach`."""
        local = Local(gateway, cluster)
        node = (ClusterNode(local, cluster) if cluster is not None and cluster.run_dir
                else SingleNode(local))
        server = cls(local, node)
        try:
            if socks:
                runner = server.runner = web.AppRunner(make_app(node), access_log=None,
                                                       handle_signals=False,
                                                       shutdown_timeout=CLOSE_WITHIN)
                await runner.setup()
                for sock in socks:
                    await web.SockSite(runner, sock).start()
                log.info("admin listening", url=_url(socks[0]), token=local.token is not None)
            if cluster is not None and cluster.run_dir is not None:
                server.control = ControlServer(socket_path(cluster.run_dir, cluster.worker),
                                               local.handle)
                await server.control.start()
        except BaseException:
            await server.close()
            raise
        return server

    def attach(self, running: Running, reloader: Reloader) -> None:
        """The gateway serves: answer for it, and record per-route stats."""
        self.local.attach(running, reloader)

    def drain(self) -> None:
        """The drain starts: ``/ready`` answers 503 from now on."""
        self.local.draining = True

    async def close(self) -> None:
        control, self.control = self.control, None
        if control is not None:
            await control.close()
        runner, self.runner = self.runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


__all__ = ["AdminServer", "Cluster"]
