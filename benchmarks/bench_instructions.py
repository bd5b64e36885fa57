"""Instructions per request under callgrind: the plugin chain's cost, free of machine noise.

Requests/s on a shared virtual machine drift by 10-20% from one minute to the next,
more than most changes this measures. The number of instructions pygate executes per
request does not: this script runs ``pygate serve`` under ``valgrind --tool=callgrind``,
sends a warm-up, zeroes the counters (``callgrind_control -z``), sends ``--requests``
requests over ten keep-alive connections (each a ``GET /`` with a valid HS256 token,
one at a time per connection), dumps the counters and divides. Run twice, the figures
agree to within a fraction of a percent.

Contenders, as in ``bench_chain.py``: ``bare`` (no plugin) and ``chain`` (jwt,
rate-limit in memory never reached, headers), each alone too (``jwt``, ``rate-limit``,
``headers``) and ``prometheus`` (the plugin with its values in memory); with
``--before REV`` the same for another revision of the repository.

Instructions are not time: the kernel's share of a request (its four socket calls and
the epoll wait) is not counted, and a cache miss costs more than an instruction. So the
ratio here is a little below the requests/s ratio (the uncounted kernel time is the same
for every contender); it tells which change made the code do less.

    .venv/bin/python benchmarks/bench_instructions.py [--requests 2000]
        [--contenders bare,chain] [--before REV] [--write-readme]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import bench_chain
from common import (
    BenchError,
    Cpus,
    ensure_tools,
    free_port,
    nginx_upstream,
    replace_readme_section,
    workspace,
)

SECTION = "instructions"
TOOLS = ("valgrind", "nginx")

PLUGINS = {
    "jwt": f'\n[plugins.jwt]\nsecret = "{bench_chain.SECRET}"\nalgorithms = ["HS256"]\n',
    "rate-limit": ('\n[plugins.rate-limit]\nlimit = 1000000000\nwindow = "1m"\n'
                   'algorithm = "fixed-window"\nkey = "consumer"\n'),
    "headers": '\n[plugins.headers]\nidentity = { X-User-Id = "id", X-User-Role = "roles" }\n',
    "prometheus": "\n[plugins.prometheus]\n",
}
CONTENDERS = {
    "bare": (),
    "chain": ("jwt", "rate-limit", "headers"),
    "jwt": ("jwt",),
    "rate-limit": ("rate-limit",),
    "headers": ("headers",),
    "prometheus": ("prometheus",),
}
CONNECTIONS = 10


def send(port: int, token: str, count: int) -> None:
    """``count`` GETs over :data:`CONNECTIONS` keep-alive connections; each must be 200."""
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {token}\r\nUser-Agent: bench\r\n\r\n").encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=120)
             for _ in range(CONNECTIONS)]
    pending = [b""] * CONNECTIONS
    try:
        for _ in range(max(1, count // CONNECTIONS)):
            for sock in socks:
                sock.sendall(request)
            for index, sock in enumerate(socks):
                pending[index] = _read_response(sock, pending[index])
    finally:
        for sock in socks:
            sock.close()


def _read_response(sock: socket.socket, buffered: bytes) -> bytes:
    """Read one response with a Content-Length body; what follows it."""
    while True:
        head, found, rest = buffered.partition(b"\r\n\r\n")
        if found:
            match = re.search(rb"(?im)^content-length: *(\d+)", head)
            length = int(match.group(1)) if match else 0
            if len(rest) >= length:
                if not head.startswith(b"HTTP/1.1 200"):
                    raise BenchError(f"unexpected answer: {head[:200]!r}")
                return rest[length:]
        data = sock.recv(65536)
        if not data:
            raise BenchError("the gateway closed the connection")
        buffered += data


def count(workdir: Path, upstream: str, name: str, plugins: tuple[str, ...], requests: int,
          token: str, source: Path | None) -> float:
    """Instructions per request of one contender."""
    port = free_port()
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    config = workdir / f"{slug}.toml"
    config.write_text(bench_chain.CONFIG.replace("{port}", str(port))
                      .replace("{upstream}", upstream)
                      .replace("{plugins}", "".join(PLUGINS[p] for p in plugins)))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(source)] + [str(source / "plugins" / p) for p in PLUGINS])
    out = workdir / f"callgrind.{slug}"
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, "-m", "pygate", "serve", "-c", str(config),
         "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=(workdir / f"{slug}.err").open("w"))
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{name} did not start: see {workdir}/{slug}.err") from None
                time.sleep(0.5)
        send(port, token, 200)  # warm-up
        subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True,
                       capture_output=True)
        send(port, token, requests)
        subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True,
                       capture_output=True)
        dumps = sorted(glob.glob(f"{out}*"), key=os.path.getmtime)
        match = re.search(r"^summary: (\d+)", Path(dumps[-1]).read_text(errors="replace"),
                          re.M) if dumps else None
        if match is None:
            raise BenchError(f"no callgrind dump for {name}")
        return int(match.group(1)) / (requests // CONNECTIONS * CONNECTIONS)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def run(names: list[str], requests: int, before: str | None) -> str:
    ensure_tools(TOOLS)
    token = bench_chain.token()
    rows: list[tuple[str, float]] = []
    with workspace("pygate-bench-instructions-") as workdir, \
            nginx_upstream(workdir, Cpus.pick().load) as upstream:
        upstream = upstream.rstrip("/")
        revisions: list[tuple[str, Path | None]] = [("", None)]
        if before is not None:
            revisions.append((f" ({before})", bench_chain.export(before, workdir)))
        for suffix, source in revisions:
            for name in names:
                if source is not None and not all(
                        (source / "plugins" / p).is_dir() for p in CONTENDERS[name]):
                    continue  # a plugin that revision does not have
                label = name + suffix
                value = count(workdir, upstream, label, CONTENDERS[name], requests, token,
                              source)
                print(f"{label:28} {value:12,.0f} instructions/request", file=sys.stderr)
                rows.append((label, value))
    return render(rows, requests, before)


def render(rows: list[tuple[str, float]], requests: int, before: str | None) -> str:
    values = dict(rows)
    lines = ["| contender | instructions per request | vs bare | over bare |",
             "| --- | ---: | ---: | ---: |"]
    for label, value in rows:
        suffix = label[len(label.split(" (")[0]):]
        bare = values.get("bare" + suffix)
        ratio = f"{bare / value:.2f}x" if bare else ""
        extra = f"+{value - bare:,.0f}" if bare and label.split(" (")[0] != "bare" else ""
        lines.append(f"| {label} | {value:,.0f} | {ratio} | {extra} |")
    lines += ["", f"{time.strftime('%Y-%m-%d')}; `valgrind --tool=callgrind`, {requests:,} "
              f"requests over {CONNECTIONS} keep-alive connections after 200 of warm-up, "
              "one process, `PYTHONHASHSEED=0`; Python "
              f"{sys.version.split()[0]}"
              + (f"; `{before}` run from `git archive` through `PYTHONPATH`." if before
                 else ".")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--contenders", default="bare,chain",
                        help=f"comma-separated, of {', '.join(CONTENDERS)} [bare,chain]")
    parser.add_argument("--before", metavar="REV", help="also count this revision")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown or "bare" not in names:
        print(f"error: contenders must include bare and come from {', '.join(CONTENDERS)}",
              file=sys.stderr)
        return 2
    try:
        text = run(names, args.requests, args.before)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    if args.write_readme:
        replace_readme_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
