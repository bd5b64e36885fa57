"""Passthrough: a plain GET proxied to a fast upstream, with no plugins on.

Measures, with the same wrk command, in interleaved rounds:

- ``nginx direct``: the upstream alone (the ceiling of the load generator);
- ``pygate``: ``pygate serve`` with one route to the upstream;
- ``aiohttp proxy``: the minimal hand-written aiohttp proxy in ``peers/aiohttp/``.

The number to watch is pygate's requests/s relative to the aiohttp proxy.

    .venv/bin/python benchmarks/bench_passthrough.py [--duration 10] [--connections 50]
        [--rounds 3] [--write-readme]
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
    WrkOptions,
    aiohttp_peer_contender,
    ensure_tools,
    flag_errors,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    pygate_contender,
    ratio_line,
    replace_readme_section,
    terminate_on_sigterm,
    workspace,
)

SECTION = "passthrough"
PYGATE = "pygate"
PEER = "aiohttp proxy"

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
    found: list[Contender] = [Contender("nginx direct", upstream, note="the upstream alone")]
    target = upstream.rstrip("/")
    pygate = pygate_contender(workdir, PYGATE_CONFIG.replace("{upstream}", target), PYGATE)
    if pygate is None:
        log_stderr("WARNING: no pygate executable beside this Python or on PATH; skipping it")
    else:
        found.append(pygate)
    found.append(aiohttp_peer_contender(target, PEER))
    # Each must answer the upstream's own body before it is measured.
    return [replace(c, expect_body=UPSTREAM_BODY.encode()) for c in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help=f"replace the {SECTION} table in benchmarks/README.md",
    )
    args = parser.parse_args(argv)
    try:
        options = WrkOptions.from_args(args)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            with workspace("pygate-bench-") as workdir:
                with nginx_upstream(workdir, cpus.load) as upstream:
                    results = measure(contenders(upstream, workdir), options, cpus, workdir)
                notes = machine_notes(options, cpus)
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130

    had_errors = flag_errors(results)
    table = "\n\n".join(
        [markdown_table(results, ratio_to=PEER), ratio_line(results, PYGATE, PEER), notes]
    )
    print(table)
    if args.write_readme:
        replace_readme_section(SECTION, table)
        log_stderr(f"wrote the {SECTION} table to benchmarks/README.md")
    return 2 if had_errors else 0


if __name__ == "__main__":
    sys.exit(main())
