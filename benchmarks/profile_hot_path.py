"""Where pygate's CPU time goes on the hot path: a py-spy profile under load.

Starts the nginx upstream (load CPU) and one pygate process (gateway CPU), as
``bench_passthrough.py`` does (with ``--plugins``: the jwt, rate-limit and headers
plugins of ``bench_plugins.py``, every request carrying a valid token; with
``--graphql``: the GraphQL route of ``bench_graphql.py`` and its query), loads pygate
with wrk at 50 connections and samples it with py-spy for ``--duration`` seconds.
It prints the share of samples by the innermost Python frame (self time), grouped
by component, and the functions that take the most.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_hot_path.py [--plugins | --graphql] [--duration 10]
        [--write-readme]

Time spent in C (uvloop's loop and its socket calls, the llhttp parser, the
kernel's send) is counted in the Python frame that called it: the event loop's
own share is the ``Runner.run`` frame, a ``transport.write`` is the writer's.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_graphql
import bench_passthrough
import bench_plugins
from common import (
    BenchError,
    Cpus,
    Process,
    ensure_tools,
    nginx_json_upstream,
    nginx_upstream,
    pinned,
    pygate_contender,
    replace_readme_section,
    venv_tool,
    wait_until_answers,
)

CONNECTIONS = 50

# (component, test on the innermost frame's file), first match wins
COMPONENTS: list[tuple[str, str]] = [
    ("event loop: uvloop's epoll wait, socket reads and callback dispatch",
     "asyncio/runners.py"),
    ("plugins (jwt, rate-limit, headers)", "pygate_"),
    ("pygate's upstream client: request head, response parsing, pool",
     "pygate/upstream/client.py"),
    ("pygate's upstream client: request head, response parsing, pool",
     "pygate/upstream/response.py"),
    ("pygate's GraphQL: documents, execution, resolvers' calls", "pygate/graphql"),
    ("pygate: pipeline, routing, header hygiene, forwarding", "pygate/"),
    ("aiohttp's server: request parsing, response head, writes to the client", "aiohttp/"),
]
OTHER = "other (asyncio, multidict, yarl, the standard library)"


def component(frame: str) -> str:
    """The component of a py-spy frame, ``function (path/to/file.py:line)``, by its file."""
    path = frame.rpartition(" (")[2]
    for name, marker in COMPONENTS:
        if marker in path:
            return name
    return OTHER


def profile(pid: int, seconds: int, out: Path) -> None:
    spy = venv_tool("py-spy") or shutil.which("py-spy")
    if spy is None:
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    done = subprocess.run([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250",
                           "-f", "raw", "-o", str(out), "--nonblocking"],
                          capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({done.returncode}): {done.stderr.strip()}")


def summarize(raw: Path, top: int = 12) -> tuple[int, list[tuple[str, float]],
                                                   list[tuple[str, float]]]:
    by_component: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        leaf = stack.split(";")[-1]
        total += samples
        by_component[component(leaf)] += samples
        function, _, where = leaf.partition(" (")
        by_function[f"{function} ({where.rsplit(':', 1)[0].split('site-packages/')[-1]})"] \
            += samples
    if not total:
        raise BenchError("py-spy recorded no samples")
    return (total,
            [(name, n / total) for name, n in by_component.most_common()],
            [(name, n / total) for name, n in by_function.most_common(top)])


def render(total: int, components: list[tuple[str, float]], functions: list[tuple[str, float]],
           plugins: bool, seconds: int, rps: str, graphql: bool = False) -> str:
    rows = ["| where the sampled frame was | share of samples |", "| --- | ---: |"]
    rows += [f"| {name} | {share:.0%} |" for name, share in components]
    rows += ["", "| function (innermost frame) | share of samples |", "| --- | ---: |"]
    rows += [f"| `{name}` | {share:.1%} |" for name, share in functions]
    what = ("a GET with a JWT through jwt, rate-limit (memory) and headers" if plugins
            else "a plain GET, no plugins")
    if graphql:
        what = (f"the GraphQL query of bench_graphql.py (`{bench_graphql.QUERY}`, "
                "three upstream calls, two of them batched)")
    rows += ["", f"{time.strftime('%Y-%m-%d')}; {what}; `wrk -t1 -c{CONNECTIONS}` "
             f"({rps} requests/s while sampled), {total:,} samples over {seconds} s "
             "(`py-spy record -r 250 --nonblocking`), pygate on the gateway CPU; "
             f"Python {sys.version.split()[0]}."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", action="store_true",
                        help="jwt + rate-limit + headers, as in bench_plugins.py")
    parser.add_argument("--graphql", action="store_true",
                        help="the GraphQL route and query of bench_graphql.py")
    parser.add_argument("--duration", type=int, default=10, help="seconds sampled [10]")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks in this file")
    args = parser.parse_args(argv)
    try:
        tools = ensure_tools()
        cpus = Cpus.pick()
        with tempfile.TemporaryDirectory(prefix="pygate-profile-") as tmp:
            workdir = Path(tmp)
            upstreams = (nginx_json_upstream(workdir, cpus.load, bench_graphql.LOCATIONS)
                         if args.graphql else nginx_upstream(workdir, cpus.load))
            with upstreams as upstream:
                target = upstream.rstrip("/")
                headers: list[str] = []
                if args.graphql:
                    contender = pygate_contender(
                        workdir, bench_graphql.PYGATE_CONFIG.replace("{upstream}", target)
                        .replace("{schema}", str(bench_graphql.SCHEMA)), path="/graphql")
                    script = workdir / "graphql.lua"
                    script.write_text(bench_graphql.WRK_LUA)
                    headers = ["-s", str(script)]
                elif args.plugins:
                    spec = bench_plugins.pygate_spec(workdir, target, "pygate", "")
                    contender = spec.contender if spec else None
                    headers = ["-H", f"Authorization: Bearer {bench_plugins.make_token()}"]
                else:
                    contender = pygate_contender(
                        workdir, bench_passthrough.PYGATE_CONFIG.replace("{upstream}", target))
                if contender is None or contender.command is None:
                    raise BenchError("no pygate executable beside this Python")
                process = Process("pygate", pinned(cpus.gateway, contender.command),
                                  workdir / "pygate.log", {})
                try:
                    wait_until_answers("pygate", contender.url + (bench_graphql.READY
                                                                  if args.graphql else ""),
                                       contender.expect_status, process=process)
                    wrk = subprocess.Popen(
                        pinned(cpus.load, [tools["wrk"], "-t1", f"-c{CONNECTIONS}",
                                           f"-d{args.duration + 4}s", *headers,
                                           contender.url]),
                        stdout=subprocess.PIPE, text=True)
                    time.sleep(2)  # warmed up
                    raw = workdir / "profile.txt"
                    profile(process.popen.pid, args.duration, raw)
                    out, _ = wrk.communicate(timeout=60)
                finally:
                    process.stop()
            total, components, functions = summarize(raw)
            if args.raw:
                shutil.copyfile(raw, args.raw)
        rps = next((line.split()[-1] for line in out.splitlines()
                    if line.startswith("Requests/sec")), "?")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = render(total, components, functions, args.plugins, args.duration, rps, args.graphql)
    print(text)
    if args.write_readme:
        replace_readme_section("profile-graphql" if args.graphql else
                               "profile-plugins" if args.plugins else "profile", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
