"""Streaming: a 10 MB download and a 10 MB upload through each gateway, and its memory.

Two passes, each with the same wrk command for every contender, in interleaved
rounds, at few connections (8 by default):

- **download**: ``GET /files/10mb.bin``, a 10 MB file nginx serves (``sendfile``);
- **upload**: ``POST /upload`` with a 10 MB body (``wrk -s upload.lua``) to
  ``upload_sink.py``, which reads every body to its end before it answers
  ``{"received": N}``.

Contenders: the upstream alone, nginx as a reverse proxy (one worker, keep-alive,
request and response buffering off), pygate (one route, ``max_body = "20MB"``),
the Express gateway with ``--checks off`` and the minimal aiohttp proxy. Each
gateway runs pinned to the gateway CPU; wrk, nginx and the sink share the load
CPU, so the upstream-alone row is the ceiling of the load side.

Besides throughput (MB/s, 1 MB = 2^20 bytes, and requests/s) and latency, the
resident memory of each gateway process is sampled during the pass
(``/proc/PID/status``: ``VmRSS`` when the load starts, ``VmHWM`` reset then and
read at the end, ``VmRSS`` polled every 20 ms as a cross-check); the table gives
the peak growth. The target: pygate's stays under 20 MB.

The bytes are checked, not assumed: before its rounds each contender must return
the file byte for byte (SHA-256) and answer an upload with ``{"received":
10485760}``; after each download run, wrk must have read at least 10 MB per
response; after each upload run, the sink must have received at least as many
complete 10 MB bodies as wrk counted responses, and none of another size. A
failed check counts as an error of that contender.

    .venv/bin/python benchmarks/bench_streaming.py [--duration 10] [--connections 8]
        [--rounds 3] [--only download|upload] [--write-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from common import (
    BENCH_DIR,
    UPSTREAM_BODY,
    BenchError,
    Contender,
    Cpus,
    Log,
    Process,
    Result,
    WrkOptions,
    aiohttp_peer_contender,
    ensure_tools,
    express_gateway_contender,
    flag_errors,
    free_port,
    log_stderr,
    machine_notes,
    measure,
    nginx_proxy_contender,
    nginx_upstream,
    node_versions,
    pinned,
    pygate_contender,
    ratio_table,
    replace_readme_section,
    terminate_on_sigterm,
    wait_until_answers,
    workspace,
)

DOWNLOAD_SECTION = "download"
UPLOAD_SECTION = "upload"

SIZE = 10 * 1024 * 1024
MB = 1024 * 1024
CONNECTIONS = 8
RSS_TARGET = 20 * MB
FILE_PATH = "/files/10mb.bin"
UPLOAD_PATH = "/upload"

NGINX = "nginx direct"
SINK = "sink direct"
NGINX_PROXY = "nginx proxy"
PYGATE = "pygate"
EXPRESS = "express gateway"
PEER = "aiohttp proxy"

PYGATE_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"
max_body = "20MB"

[upstreams.bench]
targets = ["{upstream}"]

[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""

FILES_LOCATION = """\
        location /files/ {{
            root {root};
            sendfile on;
            tcp_nopush on;
            default_type application/octet-stream;
        }}
"""

UPLOAD_LUA = f"""\
-- wrk -s: every request is a POST with a {SIZE}-byte body.
wrk.method = "POST"
wrk.body = string.rep("x", {SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

SINK_SCRIPT = BENCH_DIR / "upload_sink.py"


# ---------------------------------------------------------------------------
# Upstreams


def write_payload(root: Path) -> str:
    """Write the 10 MB file under ``root/files/``; return its SHA-256 (hex)."""
    folder = root / "files"
    folder.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(b"pygate").digest() * (MB // 32)  # 1 MB, not all one byte
    digest = hashlib.sha256()
    with (folder / Path(FILE_PATH).name).open("wb") as out:
        for n in range(SIZE // MB):
            chunk = bytes([n]) + block[1:]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def upload_sink(workdir: Path, cpu: int) -> Iterator[str]:
    """Run ``upload_sink.py`` pinned to ``cpu``; yield its base URL."""
    listen = f"127.0.0.1:{free_port()}"
    command = [sys.executable, str(SINK_SCRIPT), "--listen", listen, "--expect-size", str(SIZE)]
    process = Process("upload sink", pinned(cpu, command), workdir / "upload-sink.log", {})
    try:
        base = f"http://{listen}"
        wait_until_answers("upload sink", base + "/", 200, UPSTREAM_BODY.encode(),
                           process=process)
        yield base
    finally:
        process.stop()


@contextlib.contextmanager
def public_folder() -> Iterator[Path]:
    """A temporary folder every user can read: nginx's worker runs as ``nobody`` when
    nginx is started as root, and the workspace is private (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pygate-bench-files-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sink_stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/stats", timeout=5) as answer:
        stats: dict[str, int] = json.loads(answer.read())
    return stats


# ---------------------------------------------------------------------------
# Contenders


def contenders(base: str, workdir: Path, path: str, direct: str) -> list[Contender]:
    """Every contender proxying to ``base`` (no trailing slash), wrk hitting ``path``.

    Readiness is a small GET on ``/`` (both upstreams answer it), so no gateway has
    moved 10 MB before its memory is first read.
    """
    found: list[Contender] = [Contender(direct, base + path, note="the upstream alone",
                                        ready_url=base + "/")]
    found.append(nginx_proxy_contender(workdir, base, NGINX_PROXY, path=path))
    pygate = pygate_contender(workdir, PYGATE_CONFIG.replace("{upstream}", base), PYGATE,
                              path=path, note='max_body = "20MB"')
    if pygate is None:
        log_stderr("WARNING: no pygate executable beside this Python or on PATH; skipping it")
    else:
        found.append(pygate)
    express = express_gateway_contender(base, EXPRESS, checks=False,
                                        note="Express + http-proxy-middleware, checks off")
    if express is not None:
        found.append(replace(express, url=express.url.rstrip("/") + path))
    found.append(aiohttp_peer_contender(base, PEER, path=path))
    ready = []
    for contender in found:
        root = contender.url[: -len(path)] + "/"
        ready.append(replace(contender, ready_url=root, expect_body=UPSTREAM_BODY.encode()))
    return ready


# ---------------------------------------------------------------------------
# Checks of the bytes moved


def check_download(url: str, digest: str) -> list[str]:
    """GET ``url``: it must be the 10 MB file, byte for byte."""
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            status, body = answer.status, answer.read()
    except OSError as exc:
        return [f"download check: {exc}"]
    if status != 200 or len(body) != SIZE or hashlib.sha256(body).hexdigest() != digest:
        return [f"download check: status {status}, {len(body)} bytes, not the 10 MB file"]
    return []


def check_upload(url: str) -> list[str]:
    """POST 10 MB to ``url``: the sink must say it received all of them."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=b"x" * SIZE,
                     headers={"Content-Type": "application/octet-stream"})
        answer = conn.getresponse()
        status, body = answer.status, answer.read()
    except OSError as exc:
        return [f"upload check: {exc}"]
    finally:
        conn.close()
    expected = b'{"received":%d}' % SIZE
    if status != 200 or body != expected:
        return [f"upload check: status {status}, answer {body[:100]!r}, expected {expected!r}"]
    return []


@dataclass
class Transfers:
    """What moved during each contender's measured runs (for the note under the table)."""

    kind: str  # "download" or "upload"
    digest: str = ""
    sink: str = ""
    checked: set[str] = field(default_factory=set)
    moved: dict[str, int] = field(default_factory=dict)  # contender -> bytes
    _before: dict[str, int] = field(default_factory=dict)

    def before_run(self, result: Result) -> None:
        name = result.name
        if name not in self.checked:  # once per contender, before its first measured run
            self.checked.add(name)
            if self.kind == "download":
                result.checks += check_download(result.contender.url, self.digest)
            else:
                result.checks += check_upload(result.contender.url)
        if self.kind == "upload":
            self._before = sink_stats(self.sink)

    def after_run(self, result: Result) -> None:
        run = result.rounds[-1]
        if self.kind == "download":
            moved = int(run.bytes_read)
            if run.bytes_read < 0.99 * run.requests * SIZE:
                result.checks.append(f"wrk read {run.bytes_read / MB:,.0f} MB for "
                                     f"{run.requests} responses of 10 MB")
        else:
            after = sink_stats(self.sink)
            bodies = after["bodies"] - self._before["bodies"]
            wrong = after["wrong_size"] - self._before["wrong_size"]
            moved = after["bytes"] - self._before["bytes"]
            if bodies < run.requests or wrong:
                result.checks.append(f"the sink got {bodies} complete bodies ({wrong} not of "
                                     f"10 MB) for {run.requests} responses")
        self.moved[result.name] = self.moved.get(result.name, 0) + moved


# ---------------------------------------------------------------------------
# The passes and their tables


def stream_options(options: WrkOptions, kind: str, workdir: Path) -> WrkOptions:
    if kind == "download":
        return replace(options, script=None)
    script = workdir / "upload.lua"
    script.write_text(UPLOAD_LUA)
    return replace(options, script=str(script))


def run_download(options: WrkOptions, cpus: Cpus, workdir: Path,
                 log: Log = log_stderr) -> tuple[list[Result], Transfers]:
    """The download pass: nginx serves the file; every contender proxies to it."""
    with public_folder() as root, nginx_upstream(
        workdir, cpus.load, extra=FILES_LOCATION.format(root=root)
    ) as upstream:
        transfers = Transfers("download", digest=write_payload(root))
        base = upstream.rstrip("/")
        found = contenders(base, workdir, FILE_PATH, NGINX)
        results = measure(found, stream_options(options, "download", workdir), cpus, workdir,
                          log, watch=True, before_run=transfers.before_run,
                          after_run=transfers.after_run)
    return results, transfers


def run_upload(options: WrkOptions, cpus: Cpus, workdir: Path,
               log: Log = log_stderr) -> tuple[list[Result], Transfers]:
    """The upload pass: the sink reads every body; every contender proxies to it."""
    with upload_sink(workdir, cpus.load) as sink:
        transfers = Transfers("upload", sink=sink)
        found = contenders(sink, workdir, UPLOAD_PATH, SINK)
        results = measure(found, stream_options(options, "upload", workdir), cpus, workdir,
                          log, watch=True, before_run=transfers.before_run,
                          after_run=transfers.after_run)
    return results, transfers


def mb_per_sec(result: Result) -> float:
    return result.requests_per_sec * SIZE / MB


def stream_table(results: list[Result], ratio_to: str = PEER) -> str:
    """MB/s, requests/s, p50, p99, errors, RSS at the start and its peak growth, CPU/GB."""
    baseline = next((r for r in results if r.name == ratio_to), None)
    rows = [
        "| contender | MB/s | requests/s | p50 | p99 | errors | RSS at start | "
        f"peak RSS growth | CPU s per GB | MB/s vs {ratio_to} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        name = f"{r.name} ({r.contender.note})" if r.contender.note else r.name
        errors = f"**{r.errors}**" if r.errors else "0"
        usage = r.usage
        start = growth = cpu = "-"
        if usage is not None:
            start = f"{usage.before / MB:.1f} MB"
            growth = f"{usage.growth / MB:.1f} MB" + ("" if usage.exact else " (polled)")
            if usage.processes > 1:
                start += f" ({usage.processes} processes)"
            runs = [*r.rounds, *([r.warmup] if r.warmup else [])]
            moved = sum(run.requests for run in runs) * SIZE
            if moved:
                cpu = f"{usage.cpu_seconds / (moved / 1024**3):.2f}"
        ratio = f"{mb_per_sec(r) / mb_per_sec(baseline):.2f}x" if baseline else "-"
        rows.append(f"| {name} | {mb_per_sec(r):,.0f} | {r.requests_per_sec:,.1f} | "
                    f"{r.p50_ms:.1f} ms | {r.p99_ms:.1f} ms | {errors} | {start} | {growth} | "
                    f"{cpu} | {ratio} |")
    return "\n".join(rows)


def render(results: list[Result], transfers: Transfers, options: WrkOptions,
           cpus: Cpus) -> str:
    direct = SINK if transfers.kind == "upload" else NGINX
    pairs = [(f"{PYGATE} / {r.name}", PYGATE, r.name) for r in results
             if r.name not in (PYGATE, direct)]
    moved = ", ".join(f"{name} {count / 1024**3:,.1f} GB" for name, count in
                      transfers.moved.items())
    if transfers.kind == "upload":
        check = ("Bytes checked: each contender's upload answered `{\"received\":10485760}` "
                 "before its rounds; over the measured runs the sink read, complete and of "
                 f"10 MB each: {moved}.")
    else:
        check = ("Bytes checked: each contender returned the file byte for byte (SHA-256) "
                 f"before its rounds; over the measured runs wrk read: {moved}.")
    memory = ("Memory: per gateway, the sum over its processes of `VmRSS` when the load "
              "starts and of the growth to `VmHWM` (reset through `/proc/PID/clear_refs` at "
              "that moment, read after the last round; `VmRSS` polled every 20 ms as well), "
              "warm-up included; 1 MB = 2^20 bytes. CPU s per GB: the gateway's user + "
              "system CPU time over the same span (`/proc/PID/stat`) divided by the GB of "
              "the requests wrk completed in it (warm-up included; the transfers cut short "
              "when a run ends are not counted, so it slightly overstates every gateway); "
              "it tells the gateways apart when the load side caps their throughput.")
    notes = machine_notes(options, cpus)
    if any(r.name == EXPRESS for r in results):
        notes += (" Express gateway: "
                  + node_versions(["express", "http-proxy-middleware"]) + ".")
    return "\n\n".join([stream_table(results), ratio_table(results, pairs), check, memory,
                        notes])


def pygate_growth(results: list[Result]) -> int | None:
    """pygate's peak RSS growth in bytes, or None when it was not measured."""
    for r in results:
        if r.name == PYGATE and r.usage is not None:
            return r.usage.growth
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.set_defaults(connections=CONNECTIONS)
    parser.add_argument("--only", choices=("download", "upload"),
                        help="run one of the two passes")
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the download and upload tables in benchmarks/README.md")
    args = parser.parse_args(argv)
    passes = [args.only] if args.only else ["download", "upload"]
    outputs: list[tuple[str, str]] = []
    had_errors = False
    try:
        options = WrkOptions.from_args(args)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            with workspace("pygate-bench-streaming-") as workdir:
                for kind in passes:
                    run = run_download if kind == "download" else run_upload
                    results, transfers = run(options, cpus, workdir)
                    had_errors |= flag_errors(results)
                    shown = stream_options(options, kind, workdir)
                    outputs.append((kind, render(results, transfers, shown, cpus)))
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130

    for kind, text in outputs:
        print(f"## {kind}\n\n{text}\n")
        if args.write_readme:
            section = DOWNLOAD_SECTION if kind == "download" else UPLOAD_SECTION
            replace_readme_section(section, text)
            log_stderr(f"wrote the {section} table to benchmarks/README.md")
    return 2 if had_errors else 0


if __name__ == "__main__":
    sys.exit(main())
