"""``python -m pygate.demo``: run the users, orders and products services in one process.

One event loop, one ``AppRunner`` and ``TCPSite`` per service. Prints one line per
service once it listens, and stops cleanly on SIGINT or SIGTERM.

With ``--gateway CONFIG`` (what ``make serve`` runs) it also runs ``pygate serve -c
CONFIG`` once every service listens, and owns both: a service that cannot start stops
everything before the gateway starts, with a message naming it; SIGINT, SIGTERM or
SIGHUP to this process, the gateway exiting, or this process's parent going away (a
``kill`` of ``make`` alone) stop the gateway (drained) and the services; and the
gateway is told to stop by the kernel should this process die without a word.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from aiohttp import web

from pygate.demo.services import DEFAULT_PORTS, SERVICES, make_app
from pygate.demo.token import demo_token

SHUTDOWN_TIMEOUT = 2.0
"""Seconds in-flight requests (a long ``/slow``, an ``/sse`` stream) get at shutdown."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pygate.demo",
        description="Run the pygate demo services (users, orders, products) on loopback ports.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    for name in SERVICES:
        parser.add_argument(
            f"--{name}-port",
            type=int,
            default=DEFAULT_PORTS[name],
            metavar="PORT",
            help=f"port of the {name} service [{DEFAULT_PORTS[name]}]",
        )
    parser.add_argument("--token", action="store_true",
                        help="print a demo JWT (user 1, role admin, valid 24 h) and exit")
    parser.add_argument("--gateway", metavar="CONFIG",
                        help="also run `pygate serve -c CONFIG` once the services listen, "
                             "and stop both together")
    parser.add_argument("--https", metavar="PORT", type=int,
                        help="with --gateway: serve HTTPS (and HTTP/2) on 127.0.0.1:PORT with "
                             "a local CA's certificate, the config's listen address "
                             "redirecting to it (pygate/demo/tls.py)")
    args = parser.parse_args(argv)
    if args.https is not None and args.gateway is None:
        parser.error("--https needs --gateway")
    return args


def https_mode(config: str, port: int) -> str:
    """Make the demo's certificates and HTTPS configuration; say how to reach it; the
    configuration to serve."""
    from pathlib import Path

    from pygate.demo.tls import https_config

    tls = https_config(Path(config), port)
    https_port = tls.https.rpartition(":")[2]
    print(f"demo HTTPS on https://localhost:{https_port} (HTTP/2 and HTTP/1.1), "
          f"http://{tls.http} redirecting to it; configuration {tls.config}", flush=True)
    print(f"  curl --cacert {tls.ca} https://localhost:{https_port}/api/users/1", flush=True)
    print(f"  curl --http2 --cacert {tls.ca} -s -o /dev/null -w '%{{http_version}}\\n' "
          f"https://localhost:{https_port}/api/users", flush=True)
    return str(tls.config)


PARENT_POLL = 0.5
"""Seconds between checks that the process that started this one is still there."""

GATEWAY_STOP_WITHIN = 15.0
"""Seconds the gateway gets to drain and exit after SIGTERM before it is killed."""


def _die_with_parent() -> None:
    """In the gateway's process, before it runs: SIGTERM when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


async def run_gateway(config: str, stop: asyncio.Event) -> int:
    """``pygate serve -c config`` until it exits or ``stop`` is set (then drained); its
    exit status. The parent of this process going away sets ``stop`` too."""
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pygate", "serve", "-c", config,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    parent = os.getppid()
    exited = asyncio.ensure_future(gateway.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not exited.done():
            await asyncio.wait({exited, stopping}, timeout=PARENT_POLL,
                               return_when=asyncio.FIRST_COMPLETED)
            if os.getppid() != parent:
                print("pygate.demo: the process that started it has gone; stopping",
                      file=sys.stderr, flush=True)
                stop.set()
            if stop.is_set() and not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    gateway.terminate()  # SIGTERM: the gateway drains, then exits
                try:
                    await asyncio.wait_for(asyncio.shield(exited), GATEWAY_STOP_WITHIN)
                except TimeoutError:
                    gateway.kill()
                    await exited
    finally:
        stopping.cancel()
    status: int = exited.result()
    if stop.is_set() and status in (-signal.SIGTERM, -signal.SIGINT):
        return 0  # asked to stop: it ended on our SIGTERM (or the terminal's SIGINT)
    return 128 - status if status < 0 else status  # as a shell reports a signal


class ServiceError(Exception):
    """A demo service could not start (its port is taken, most often)."""


async def serve(host: str, ports: dict[str, int], gateway: str | None = None) -> int:
    """Start every service (and, with ``gateway``, the gateway after them), wait for
    SIGINT/SIGTERM/SIGHUP or the gateway's exit, then stop them all; the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    runners: list[web.AppRunner] = []
    status = 0
    try:
        for name in SERVICES:
            runner = web.AppRunner(
                make_app(name), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
            )
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, host, ports[name]).start()
            except OSError as exc:
                raise ServiceError(f"the demo {name} service cannot listen on "
                                   f"{host}:{ports[name]}: {exc.strerror or exc}") from None
            print(f"demo {name} service listening on http://{host}:{ports[name]}", flush=True)
        try:
            print(f"demo token (user 1, role admin, 24 h): {demo_token()}", flush=True)
        except ImportError:
            print("demo token: install plugins/jwt to get one", flush=True)
        if gateway is None:
            await stop.wait()
        else:
            status = await run_gateway(gateway, stop)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for signum in signals:
            loop.remove_signal_handler(signum)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.token:
        print(demo_token())
        return 0
    ports = {name: getattr(args, f"{name}_port") for name in SERVICES}
    gateway = args.gateway
    if args.https is not None:
        try:
            gateway = https_mode(args.gateway, args.https)
        except (OSError, ValueError) as exc:
            print(f"pygate.demo: HTTPS mode: {exc}", file=sys.stderr)
            return 1
    try:
        status = asyncio.run(serve(args.host, ports, gateway))
    except (ServiceError, OSError) as exc:
        print(f"pygate.demo: {exc}", file=sys.stderr)
        if args.gateway is not None:
            print("pygate.demo: the gateway was not started; free the port (or pass "
                  "--NAME-port) and try again", file=sys.stderr)
        return 1
    print("demo services stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
