"""Aggregation: one GET composed from three upstream calls, through pygate and by hand.

The upstream is one nginx answering three small JSON locations (``/users/1``,
``/orders/1``, ``/products?orderId=1``). Measured with the same wrk command, in
interleaved rounds:

- ``nginx direct``: one of the three locations alone (one upstream round trip);
- ``pygate``: ``pygate serve`` with an aggregate route making the three calls
  (two required, one optional), no plugins;
- ``express``: the same composition hand-written in Express 5 with undici
  (``Promise.allSettled``, keep-alive Agent), in ``peers/express/``;
- ``aiohttp``: the same composition hand-written in aiohttp (``asyncio.gather``,
  one keep-alive ``ClientSession``), in ``peers/aiohttp/aggregate.py``.

Every contender must answer the very same bytes before it is measured. A second
pass with one connection shows latency without queueing: pygate's p50 minus
nginx's is what the gateway adds to one round trip of the slowest call
(PRODUCT.md section 9: well under a millisecond).

    .venv/bin/python benchmarks/bench_aggregate.py [--duration 10] [--connections 50]
        [--rounds 3] [--latency-duration 5] [--write-readme]

Node and npm are needed for the Express peer (its packages are installed with
``npm ci`` into ``peers/express/node_modules`` on first use); without them that
row is skipped with a warning.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from common import (
    BENCH_DIR,
    EXPRESS_DIR,
    BenchError,
    Contender,
    Cpus,
    Result,
    WrkOptions,
    ensure_tools,
    free_port,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_json_upstream,
    npm_install,
    pygate_contender,
    ratio_line,
    report,
    terminate_on_sigterm,
    workspace,
)

SECTION = "aggregate"
PYGATE = "pygate"
EXPRESS = "express"
AIOHTTP = "aiohttp"
NGINX = "nginx direct"
PATH = "/agg/1"

LOCATIONS = {
    "/users/1": '{"id":"1","name":"Alice Demo","email":"alice@example.com",'
                '"address":{"city":"Lisbon","country":"PT"}}',
    "/orders/1": '{"id":"1","userId":"1","total":59.9,"status":"shipped"}',
    "/products": '[{"id":"1001","name":"Widget","price":19.95},'
                 '{"id":"1002","name":"Gadget","price":20.5}]',
}
EXPECTED = ('{"user":' + LOCATIONS["/users/1"] + ',"order":' + LOCATIONS["/orders/1"]
            + ',"items":' + LOCATIONS["/products"] + "}").encode()

PYGATE_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.users]
targets = ["{upstream}"]

[upstreams.orders]
targets = ["{upstream}"]

[upstreams.products]
targets = ["{upstream}"]

[[routes]]
name = "bench"
path = "/agg/{id}"
methods = ["GET"]
[routes.aggregate]
timeout = "3s"
[routes.aggregate.calls.user]
upstream = "users"
path = "/users/{id}"
[routes.aggregate.calls.order]
upstream = "orders"
path = "/orders/{id}"
[routes.aggregate.calls.items]
upstream = "products"
path = "/products"
query = { orderId = "{id}" }
optional = true
"""

def express_contender(upstream: str) -> Contender | None:
    """The Express peer, installing its packages with npm when needed; None without node."""
    node = shutil.which("node")
    if node is None or not npm_install(EXPRESS_DIR):
        log_stderr("WARNING: node/npm missing or npm install failed; skipping the Express peer")
        return None
    listen = f"127.0.0.1:{free_port()}"
    command = [node, str(EXPRESS_DIR / "aggregate.js"), "--listen", listen,
               "--upstream", upstream]
    return Contender(EXPRESS, f"http://{listen}{PATH}", command, note="Express 5 + undici")


def aiohttp_contender(upstream: str) -> Contender:
    listen = f"127.0.0.1:{free_port()}"
    script = BENCH_DIR / "peers" / "aiohttp" / "aggregate.py"
    command = [sys.executable, str(script), "--listen", listen, "--upstream", upstream]
    return Contender(AIOHTTP, f"http://{listen}{PATH}", command, note="asyncio.gather")


def contenders(upstream: str, workdir: Path) -> list[Contender]:
    first = next(iter(LOCATIONS))
    found = [Contender(NGINX, upstream + first, note="one of the three calls alone",
                       expect_body=LOCATIONS[first].encode())]
    config = PYGATE_CONFIG.replace("{upstream}", upstream)
    pygate = pygate_contender(workdir, config, PYGATE, note="aggregate route", path=PATH)
    if pygate is None:
        log_stderr("WARNING: no pygate executable beside this Python or on PATH; skipping it")
    else:
        found.append(replace(pygate, expect_body=EXPECTED))
    express = express_contender(upstream)
    if express is not None:
        found.append(replace(express, expect_body=EXPECTED))
    found.append(replace(aiohttp_contender(upstream), expect_body=EXPECTED))
    return found


def added_latency(results: list[Result]) -> str:
    """One line: each aggregator's p50 at one connection, minus nginx's (one round trip)."""
    by_name = {r.name: r for r in results}
    base = by_name.get(NGINX)
    if base is None:
        return ""
    parts = [f"{name} +{by_name[name].p50_ms - base.p50_ms:.2f} ms"
             for name in (PYGATE, EXPRESS, AIOHTTP) if name in by_name]
    return (f"Latency at one connection (p50, three calls vs one upstream round trip of "
            f"{base.p50_ms:.2f} ms): " + ", ".join(parts) + ".")


def latency_table(results: list[Result]) -> str:
    rows = ["| contender | p50 | p99 | requests/s |", "| --- | ---: | ---: | ---: |"]
    for r in results:
        rows.append(f"| {r.name} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
                    f"{r.requests_per_sec:,.0f} |")
    return "\n".join(rows)


def render(results: list[Result], latency: list[Result], notes: str,
           latency_duration: int) -> str:
    """The README section: the table, pygate's ratios, the one-connection pass, the notes."""
    parts = [
        markdown_table(results, ratio_to=AIOHTTP),
        "\n".join([ratio_line(results, PYGATE, AIOHTTP) + "  ",
                   ratio_line(results, PYGATE, EXPRESS)]),
    ]
    if latency:
        parts += [f"One connection (`wrk -c1 -d{latency_duration}s`), same rounds:",
                  latency_table(latency), added_latency(latency)]
    parts.append(notes + " Peers: Express "
                 + _express_version() + " with undici, on node " + _node_version() + ".")
    return "\n\n".join(parts)


def measure_both(upstream: str, workdir: Path, options: WrkOptions, cpus: Cpus,
                 latency_duration: int) -> tuple[list[Result], list[Result]]:
    """The loaded pass with ``options``, then (unless ``latency_duration`` is 0) the
    one-connection pass, each on freshly started contenders."""
    results = measure(contenders(upstream, workdir), options, cpus, workdir)
    latency: list[Result] = []
    if latency_duration > 0:
        single = replace(options, connections=1, duration=latency_duration, warmup=1)
        latency = measure(contenders(upstream, workdir), single, cpus, workdir)
    return results, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--latency-duration", type=int, default=5, metavar="SECONDS",
                        help="duration of each one-connection latency run; 0 skips that pass")
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the {SECTION} table in benchmarks/README.md")
    args = parser.parse_args(argv)
    try:
        options = WrkOptions.from_args(args)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            with workspace("pygate-bench-aggregate-") as workdir:
                with nginx_json_upstream(workdir, cpus.load, LOCATIONS) as upstream:
                    results, latency = measure_both(upstream, workdir, options, cpus,
                                                    args.latency_duration)
                notes = machine_notes(options, cpus)
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130

    return report(render(results, latency, notes, args.latency_duration), SECTION,
                  args.write_readme, results, latency)


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "?"
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or "?"


def _express_version() -> str:
    try:
        lock = json.loads((EXPRESS_DIR / "node_modules" / "express" / "package.json").read_text())
    except (OSError, ValueError):
        return "?"
    return str(lock.get("version", "?"))


if __name__ == "__main__":
    sys.exit(main())
