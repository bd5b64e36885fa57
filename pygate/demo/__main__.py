"""``python -m pygate.demo``: run the users, orders and products services in one process.

One event loop, one ``AppRunner`` and ``TCPSite`` per service. Prints one line per
service once it listens, and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
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
    return parser.parse_args(argv)


async def serve(host: str, ports: dict[str, int]) -> None:
    """Start every service, wait for SIGINT/SIGTERM, then stop them all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    runners: list[web.AppRunner] = []
    try:
        for name in SERVICES:
            runner = web.AppRunner(
                make_app(name), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, ports[name]).start()
            print(f"demo {name} service listening on http://{host}:{ports[name]}", flush=True)
        try:
            print(f"demo token (user 1, role admin, 24 h): {demo_token()}", flush=True)
        except ImportError:
            print("demo token: install plugins/jwt to get one", flush=True)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.token:
        print(demo_token())
        return 0
    ports = {name: getattr(args, f"{name}_port") for name in SERVICES}
    try:
        asyncio.run(serve(args.host, ports))
    except OSError as exc:  # most often: a port is already taken
        print(f"pygate.demo: {exc}", file=sys.stderr)
        return 1
    print("demo services stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
