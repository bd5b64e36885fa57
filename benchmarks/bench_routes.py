"""Route table size: a GET to the first and to the last of 10, 1,000 and 10,000 routes.

For each size N, ``pygate serve`` loads N prefix routes (``/r0`` ... ``/rN-1``,
one upstream, no plugins; all of the same rank, so the match order is the file
order) and runs pinned to the gateway CPU. Measured in one run:

- requests/s, p50 and p99 of ``GET /r0`` (the first route in match order) and
  of ``GET /rN-1/x`` (the last), all six in interleaved rounds with the same wrk
  command; the first and the last of a size are served by the same process;
- the configuration's load time, in a fresh Python: ``pygate.config.load``
  (TOML, validation, cross-checks) and ``build_gateway`` (the router, the plugin
  chains and the route kinds), the median of ``--load-runs`` runs; and the time
  from starting ``pygate serve`` to its first answer;
- memory per route: the ``VmRSS`` of each ``pygate serve`` once it has answered
  its first request, its growth over the 10-route process divided by the routes
  added.

The number to watch: requests/s to the last of 10,000 routes relative to the last
of 10 (the issue's target is at least 0.90x).

    .venv/bin/python benchmarks/bench_routes.py [--duration 10] [--rounds 3]
        [--sizes 10,1000,10000] [--load-runs 3] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from common import (
    UPSTREAM_BODY,
    BenchError,
    Contender,
    Cpus,
    Process,
    Result,
    WrkOptions,
    ensure_tools,
    free_port,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    pinned,
    pygate_contender,
    run_scenario,
    venv_tool,
    wait_until_answers,
    workspace,
)

SECTION = "routes"
SIZES = (10, 1_000, 10_000)
TARGET = 0.90  # last of the largest table / last of the smallest, requests/s

HEAD = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["UPSTREAM"]
"""

ROUTE = """
[[routes]]
name = "r{index}"
path = "/r{index}"
upstream = "bench"
"""

# Times load and build_gateway in a fresh interpreter; prints JSON.
LOAD_SCRIPT = """\
import json, sys, time
from pygate.app import build_gateway
from pygate.config import load
started = time.perf_counter()
config = load(sys.argv[1])
loaded = time.perf_counter()
build_gateway(config)
built = time.perf_counter()
print(json.dumps({"load": loaded - started, "build": built - loaded}))
"""


def config_text(size: int, upstream: str) -> str:
    """``pygate.toml`` with ``size`` prefix routes ``/r0`` ... (``{port}`` left to fill)."""
    routes = "".join(ROUTE.replace("{index}", str(i)) for i in range(size))
    return HEAD.replace("UPSTREAM", upstream.rstrip("/")) + routes


def first_name(size: int) -> str:
    return f"{size:,} routes, first"


def last_name(size: int) -> str:
    return f"{size:,} routes, last"


@dataclass
class Startup:
    """What one table size costs before any request: times in seconds, memory in KB."""

    size: int
    load_s: float  # pygate.config.load
    build_s: float  # build_gateway
    ready_s: float  # `pygate serve` started -> first answer
    rss_kb: int  # VmRSS of `pygate serve` after its first answer


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def time_load(path: Path, runs: int) -> tuple[float, float]:
    """Median seconds of ``load`` and of ``build_gateway`` over ``runs`` fresh processes."""
    loads, builds = [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BenchError(f"loading {path} failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout)
        loads.append(figures["load"])
        builds.append(figures["build"])
    return statistics.median(loads), statistics.median(builds)


def startup(size: int, upstream: str, workdir: Path, cpus: Cpus, runs: int) -> Startup:
    """Load times in a fresh Python; then one `pygate serve`: time to ready and RSS."""
    pygate = venv_tool("pygate")
    if pygate is None:
        raise BenchError("no pygate executable beside this Python or on PATH")
    port = free_port()
    path = workdir / f"startup-{size}.toml"
    path.write_text(config_text(size, upstream).replace("{port}", str(port)))
    load_s, build_s = time_load(path, runs)
    command = [pygate, "serve", "-c", str(path), "--log-level", "warning"]
    started = time.monotonic()
    process = Process(f"pygate {size}", pinned(cpus.gateway, command),
                            workdir / f"startup-{size}.log", {})
    try:
        wait_until_answers(f"pygate {size}", f"http://127.0.0.1:{port}/r0", 200,
                           UPSTREAM_BODY.encode(), timeout=120, process=process)
        ready_s = time.monotonic() - started
        memory = rss_kb(process.popen.pid)  # taskset execs pygate: the same pid
    finally:
        process.stop()
    log_stderr(f"{size:,} routes: load {load_s:.3f} s, build {build_s:.3f} s, "
               f"ready in {ready_s:.2f} s, RSS {memory / 1024:.1f} MB")
    return Startup(size, load_s, build_s, ready_s, memory)


def contenders(sizes: tuple[int, ...], upstream: str, workdir: Path) -> list[Contender]:
    """Per size: the first route (its command starts the server) and the last (the same
    server, already running when its turn to be polled comes)."""
    found = []
    for size in sizes:
        pygate = pygate_contender(workdir, config_text(size, upstream), first_name(size),
                                  path="/r0")
        if pygate is None:
            raise BenchError("no pygate executable beside this Python or on PATH")
        first = replace(pygate, expect_body=UPSTREAM_BODY.encode(), start_timeout=120)
        base = first.url.rsplit("/", 1)[0]
        last = Contender(last_name(size), f"{base}/r{size - 1}/x",
                         note="same process", expect_body=UPSTREAM_BODY.encode())
        found += [first, last]
    return found


def startup_table(startups: list[Startup]) -> str:
    smallest = startups[0]
    rows = [
        "| routes | config load | build_gateway | `pygate serve` ready | RSS after start "
        "| memory per route |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in startups:
        added = s.size - smallest.size
        per_route = (f"{(s.rss_kb - smallest.rss_kb) * 1024 / added:,.0f} B" if added
                     else "(baseline)")
        rows.append(f"| {s.size:,} | {s.load_s * 1000:,.0f} ms | {s.build_s * 1000:,.0f} ms "
                    f"| {s.ready_s:.2f} s | {s.rss_kb / 1024:.1f} MB | {per_route} |")
    return "\n".join(rows)


def target_line(results: list[Result], sizes: tuple[int, ...]) -> str:
    by_name = {r.name: r for r in results}
    small, large = by_name[last_name(sizes[0])], by_name[last_name(sizes[-1])]
    ratio = large.requests_per_sec / small.requests_per_sec
    met = "met" if ratio >= TARGET else "**not met**"
    return (f"Last of {sizes[-1]:,} routes / last of {sizes[0]:,}: **{ratio:.2f}x** requests/s "
            f"({large.requests_per_sec:,.0f} vs {small.requests_per_sec:,.0f}); target "
            f">= {TARGET:.2f}x: {met}.")


def render(results: list[Result], startups: list[Startup], sizes: tuple[int, ...],
           options: WrkOptions, cpus: Cpus, load_runs: int, load_average: str) -> str:
    notes = (machine_notes(options, cpus) + f" Load average {load_average}. "
             f"Config load and build_gateway: median of {load_runs} fresh processes; ready: "
             "from starting `pygate serve` (pinned) to its first 200; RSS: VmRSS after that "
             "answer; memory per route: RSS growth over the "
             f"{sizes[0]:,}-route process / routes added.")
    return "\n\n".join([
        markdown_table(results, ratio_to=last_name(sizes[0])),
        target_line(results, sizes),
        startup_table(startups),
        notes,
    ])


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(options: WrkOptions, sizes: tuple[int, ...],
        load_runs: int) -> tuple[list[Result], str]:
    ensure_tools()
    cpus = Cpus.pick()
    load_average = f"{_load_average()} at the start"
    with workspace("pygate-bench-routes-") as workdir:
        with nginx_upstream(workdir, cpus.load) as upstream:
            startups = [startup(size, upstream, workdir, cpus, load_runs) for size in sizes]
            results = measure(contenders(sizes, upstream, workdir), options, cpus, workdir)
    load_average += f", {_load_average()} at the end"
    return results, render(results, startups, sizes, options, cpus, load_runs, load_average)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="route table sizes, smallest first [10,1000,10000]")
    parser.add_argument("--load-runs", type=int, default=3,
                        help="fresh processes timing the config load [3]")
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the {SECTION} table in benchmarks/README.md")
    args = parser.parse_args(argv)
    try:
        sizes = tuple(sorted({int(s) for s in args.sizes.split(",")}))
    except ValueError:
        parser.error(f"--sizes: expected numbers separated by commas, found {args.sizes!r}")
    if len(sizes) < 2 or sizes[0] < 1 or args.load_runs < 1:
        parser.error("--sizes needs two sizes or more, each >= 1; --load-runs must be >= 1")
    return run_scenario(lambda: run(WrkOptions.from_args(args), sizes, args.load_runs),
                        SECTION, args.write_readme)


if __name__ == "__main__":
    sys.exit(main())
