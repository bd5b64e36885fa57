"""Passthrough: a plain GET proxied to a fast upstream, with no plugins on.

Measures, with the same wrk command, in interleaved rounds:

- ``nginx direct``: the upstream alone (the ceiling of the load generator);
- ``nginx proxy``: nginx as a reverse proxy (generated ``nginx.conf``, one
  worker, keep-alive to the upstream);
- ``pygate``: ``pygate serve`` with one route to the upstream;
- ``express gateway``: ``peers/express/server.js`` with ``--checks off``
  (Express + http-proxy-middleware with a keep-alive agent, proxying plainly);
  skipped without node and npm;
- ``aiohttp proxy``: the minimal hand-written aiohttp proxy in ``peers/aiohttp/``.

The number to watch is pygate's requests/s relative to the aiohttp proxy and to
Express. ``--scaling`` measures instead ``pygate --workers 1`` against
``--workers 2``, neither pinned to a CPU (see :func:`scaling_contenders`).

    .venv/bin/python benchmarks/bench_passthrough.py [--duration 10] [--connections 50]
        [--rounds 3] [--scaling] [--write-readme]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from common import (
    UPSTREAM_BODY,
    BenchError,
    Contender,
    Cpus,
    Result,
    WrkOptions,
    aiohttp_peer_contender,
    ensure_tools,
    express_gateway_contender,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_proxy_contender,
    nginx_upstream,
    node_versions,
    pygate_contender,
    ratio_line,
    ratio_table,
    report,
    terminate_on_sigterm,
    workspace,
)

SECTION = "passthrough"
SCALING_SECTION = "scaling"
NGINX = "nginx direct"
NGINX_PROXY = "nginx proxy"
PYGATE = "pygate"
EXPRESS = "express gateway"
PEER = "aiohttp proxy"
PYGATE_W1 = "pygate --workers 1"
PYGATE_W2 = "pygate --workers 2"

PYGATE_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["{upstream}"]

[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""


def contenders(upstream: str, workdir: Path) -> list[Contender]:
    """nginx direct, nginx proxy, pygate, the Express gateway (checks off), aiohttp proxy."""
    found: list[Contender] = [Contender(NGINX, upstream, note="the upstream alone")]
    target = upstream.rstrip("/")
    found.append(nginx_proxy_contender(workdir, target, NGINX_PROXY))
    pygate = pygate_contender(workdir, PYGATE_CONFIG.replace("{upstream}", target), PYGATE)
    if pygate is None:
        log_stderr("WARNING: no pygate executable beside this Python or on PATH; skipping it")
    else:
        found.append(pygate)
    express = express_gateway_contender(target, EXPRESS, checks=False,
                                        note="Express + http-proxy-middleware, checks off")
    if express is not None:
        found.append(express)
    found.append(aiohttp_peer_contender(target, PEER))
    # Each must answer the upstream's own body before it is measured.
    return [replace(c, expect_body=UPSTREAM_BODY.encode()) for c in found]


def scaling_contenders(upstream: str, workdir: Path) -> list[Contender]:
    """pygate with ``--workers 1`` and ``--workers 2``, neither pinned (both may use every CPU).

    wrk and the upstream stay pinned to the load CPU, so on a 2-core machine the
    second worker shares that CPU with them.
    """
    target = upstream.rstrip("/")
    config = PYGATE_CONFIG.replace("{upstream}", target)
    found = []
    for name, workers in ((PYGATE_W1, "1"), (PYGATE_W2, "2")):
        pygate = pygate_contender(workdir, config, name, note="not pinned",
                                  extra_args=("--workers", workers))
        if pygate is None:
            raise BenchError("no pygate executable beside this Python or on PATH")
        found.append(replace(pygate, pin=False, expect_body=UPSTREAM_BODY.encode()))
    return found


def peer_ratios(results: list[Result], subject: str = PYGATE) -> str:
    """pygate / each other contender but the upstream itself."""
    pairs = [(f"{subject} / {r.name}", subject, r.name) for r in results
             if r.name not in (subject, NGINX)]
    return ratio_table(results, pairs)


def render(results: list[Result], options: WrkOptions, cpus: Cpus) -> str:
    notes = machine_notes(options, cpus)
    if any(r.name == EXPRESS for r in results):
        notes += (" Express gateway: "
                  + node_versions(["express", "http-proxy-middleware"]) + ".")
    return "\n\n".join([markdown_table(results, ratio_to=PEER), peer_ratios(results), notes])


def render_scaling(results: list[Result], options: WrkOptions, cpus: Cpus) -> str:
    notes = machine_notes(options, cpus).replace(
        f"gateways on CPU {cpus.gateway}, ", "pygate not pinned (any CPU), ")
    return "\n\n".join([markdown_table(results, ratio_to=PYGATE_W1),
                         ratio_line(results, PYGATE_W2, PYGATE_W1), notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--scaling", action="store_true",
                        help="measure pygate --workers 1 against --workers 2 instead")
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help=f"replace the {SECTION} (or {SCALING_SECTION}) table in benchmarks/README.md",
    )
    args = parser.parse_args(argv)
    section = SCALING_SECTION if args.scaling else SECTION
    try:
        options = WrkOptions.from_args(args)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            with workspace("pygate-bench-") as workdir:
                with nginx_upstream(workdir, cpus.load) as upstream:
                    make = scaling_contenders if args.scaling else contenders
                    results = measure(make(upstream, workdir), options, cpus, workdir)
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130

    table = (render_scaling if args.scaling else render)(results, options, cpus)
    return report(table, section, args.write_readme, results)


if __name__ == "__main__":
    sys.exit(main())
