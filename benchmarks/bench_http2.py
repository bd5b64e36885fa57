"""HTTP/2 with many streams per connection against HTTP/1.1, through the same gateway.

One ``pygate serve`` with ``h2c = true`` and one route to the nginx upstream (pinned
to the gateway CPU), one without ``h2c`` (the HTTP/1.1 listener as it is by default),
measured in interleaved rounds:

- ``HTTP/1.1``: wrk, ``--connections`` connections (50), against the plain gateway;
- ``HTTP/1.1 on h2c``: the same wrk command against the h2c gateway (what the
  preface sniffing costs HTTP/1.1 clients);
- ``HTTP/2``: ``--h2-connections`` connections (4) with ``--streams`` streams in
  flight on each (100), against the h2c gateway. The load comes from h2load
  (Debian's ``nghttp2-client``: ``apt-get install nghttp2-client``) when it is
  installed, else from this script's own generator (``--generate``: the h2 library on
  asyncio, one process), which the table names. The script never installs it.

Besides requests/s and latency, the table gives the gateway's CPU time per request
(user plus system, ``/proc/PID/stat``, over the measured runs): with a Python load
generator the HTTP/2 requests/s may be the generator's ceiling, while CPU per
request is the gateway's own cost whatever drives it.

    .venv/bin/python benchmarks/bench_http2.py [--duration 10] [--connections 50]
        [--h2-connections 4] [--streams 100] [--rounds 3] [--write-readme]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from common import (
    BenchError,
    Cpus,
    Process,
    UsageWatch,
    WrkOptions,
    ensure_tools,
    find_tool,
    log_stderr,
    machine_notes,
    nginx_upstream,
    pinned,
    pygate_contender,
    replace_readme_section,
    run_wrk,
    terminate_on_sigterm,
    wait_until_answers,
    workspace,
)

SECTION = "http2"

CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"
h2c = %s
max_concurrent_streams = 128

[upstreams.bench]
targets = ["%s"]

[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""


@dataclass
class Run:
    """One measured run: requests/s, latency percentiles (ms), errors."""

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int = 0


@dataclass
class Row:
    name: str
    load: str
    runs: list[Run] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    @property
    def cpu_us_per_request(self) -> float:
        requests = sum(run.requests for run in self.runs)
        return self.cpu_seconds / requests * 1e6 if requests else 0.0


# ---------------------------------------------------------------------------
# The HTTP/2 load: h2load, or the generator below


def run_h2load(url: str, connections: int, streams: int, duration: int, cpu: int) -> Run:
    command = pinned(cpu, ["h2load", "-c", str(connections), "-m", str(streams),
                           "-D", str(duration), url])
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise BenchError(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored", out)
    latency = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+"
                        r"([\d.]+)(us|ms|s)", out)
    if not (rps and status and counts and latency):
        raise BenchError(f"cannot read h2load output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    mean = float(latency[5]) * scale[latency[6]]
    return Run(float(rps[1]), mean, float(latency[3]) * scale[latency[4]], int(counts[1]),
               int(counts[3]) + int(counts[4]) + int(status[3]) + int(status[4]))


def run_generator(url: str, connections: int, streams: int, duration: int, cpu: int) -> Run:
    command = pinned(cpu, [sys.executable, __file__, "--generate", url, "--h2-connections",
                           str(connections), "--streams", str(streams),
                           "--duration", str(duration)])
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise BenchError(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    return Run(**json.loads(done.stdout))


class _Load(asyncio.Protocol):
    """One connection keeping ``streams`` GETs in flight, for ``deadline`` seconds."""

    def __init__(self, host: str, path: str, streams: int, deadline: float,
                 latencies: list[float], errors: list[int], done: asyncio.Future[None]) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None,
                                                 validate_outbound_headers=False,
                                                 normalize_outbound_headers=False,
                                                 validate_inbound_headers=False))
        self.head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", host.encode()),
                     (b":path", path.encode())]
        self.streams = streams
        self.deadline = deadline
        self.latencies = latencies
        self.errors = errors
        self.done = done
        self.started: dict[int, float] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        from h2.settings import SettingCodes

        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.conn.increment_flow_control_window(1 << 24)
        for _ in range(self.streams):
            self._start()
        self._flush()

    def _start(self) -> None:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, self.head, end_stream=True)
        self.started[stream_id] = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        from h2.events import DataReceived, StreamEnded, StreamReset

        for event in self.conn.receive_data(data):
            if isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, (StreamEnded, StreamReset)):
                began = self.started.pop(event.stream_id, None)
                if began is not None:
                    if isinstance(event, StreamEnded):
                        self.latencies.append(time.perf_counter() - began)
                    else:
                        self.errors.append(1)
                if time.perf_counter() < self.deadline:
                    self._start()
                elif not self.started and not self.done.done():
                    self.done.set_result(None)
        self._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.errors.append(len(self.started))
            self.done.set_result(None)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


async def generate(url: str, connections: int, streams: int, duration: float) -> Run:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    deadline = start + duration
    waits = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(
            lambda done=done: _Load(f"{host}:{port}", parts.path or "/", streams, deadline,
                                    latencies, errors, done), host, port)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), duration + 30)
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return Run(len(latencies) / elapsed, pct(0.5) if latencies else 0.0,
               pct(0.99) if latencies else 0.0, len(latencies), sum(errors))


# ---------------------------------------------------------------------------
# The scenario


def run(args: argparse.Namespace) -> str:
    options = WrkOptions.from_args(args)
    ensure_tools(("wrk", "nginx", "taskset"))
    h2load = find_tool("h2load")
    if h2load is None:
        log_stderr("h2load not found (apt-get install nghttp2-client): using this script's "
                   "own HTTP/2 load generator")
    load_h2 = (f"h2load -c{args.h2_connections} -m{args.streams}" if h2load else
               f"bench_http2.py --generate ({args.h2_connections} connections x "
               f"{args.streams} streams)")
    cpus = Cpus.pick()
    with workspace("pygate-bench-http2-") as workdir, \
            nginx_upstream(workdir, cpus.load) as upstream:
        plain = pygate_contender(workdir, CONFIG % ("false", upstream.rstrip("/")),
                                 "pygate HTTP/1.1")
        h2c = pygate_contender(workdir, CONFIG % ("true", upstream.rstrip("/")), "pygate h2c")
        if plain is None or h2c is None:
            raise BenchError("no pygate executable beside this Python")
        processes: dict[str, Process] = {}
        try:
            for contender in (plain, h2c):
                assert contender.command is not None
                processes[contender.name] = Process(
                    contender.name, pinned(cpus.gateway, contender.command),
                    workdir / f"{contender.name.replace(' ', '-').replace('/', '')}.log",
                    {})
                wait_until_answers(contender.name, contender.url,
                                   process=processes[contender.name])
            rows = [Row("HTTP/1.1", f"wrk -c{options.connections}"),
                    Row("HTTP/1.1 on the h2c listener", f"wrk -c{options.connections}"),
                    Row("HTTP/2 (h2c)", load_h2)]
            targets = [(plain, "h1"), (h2c, "h1"), (h2c, "h2")]

            def once(index: int, duration: int) -> Run:
                contender, kind = targets[index]
                if kind == "h1":
                    result = run_wrk(contender.url, options, cpus.load, duration)
                    return Run(result.requests_per_sec, result.p50_ms, result.p99_ms,
                               result.requests, result.errors)
                measure = run_h2load if h2load else run_generator
                return measure(contender.url, args.h2_connections, args.streams, duration,
                               cpus.load)

            if options.warmup:
                for index, row in enumerate(rows):
                    log_stderr(f"warming up {row.name} ({options.warmup}s)")
                    once(index, options.warmup)
            for n in range(1, options.rounds + 1):
                for index, row in enumerate(rows):
                    time.sleep(0.5)
                    contender = targets[index][0]
                    watch = UsageWatch([processes[contender.name].popen.pid])
                    watch.start()
                    result = once(index, options.duration)
                    usage = watch.stop()
                    row.runs.append(result)
                    row.cpu_seconds += next(iter(usage.values())).cpu_seconds
                    log_stderr(f"round {n}/{options.rounds} {row.name:<30} "
                               f"{result.requests_per_sec:>9,.0f} req/s  p50 "
                               f"{result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
                               + (f"  ERRORS: {result.errors}" if result.errors else ""))
        finally:
            for process in processes.values():
                process.stop()
    lines = ["| protocol | load | requests/s | p50 ms | p99 ms | gateway CPU per request |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        errors = sum(r.errors for r in row.runs)
        flag = f" **({errors} errors)**" if errors else ""
        lines.append(f"| {row.name}{flag} | {row.load} | {row.median('requests_per_sec'):,.0f} "
                     f"| {row.median('p50_ms'):.2f} | {row.median('p99_ms'):.2f} "
                     f"| {row.cpu_us_per_request:.0f} µs |")
    h1, h2 = rows[0], rows[2]
    lines += ["", f"HTTP/2 costs the gateway {h2.cpu_us_per_request / h1.cpu_us_per_request:.2f}x "
                  "the CPU per request of HTTP/1.1.", "", machine_notes(options, cpus)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--h2-connections", type=int, default=4, help="HTTP/2 connections [4]")
    parser.add_argument("--streams", type=int, default=100, help="streams per connection [100]")
    parser.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.generate:
        result = asyncio.run(generate(args.generate, args.h2_connections, args.streams,
                                      args.duration))
        print(json.dumps(result.__dict__))
        return 0
    try:
        with terminate_on_sigterm():
            text = run(args)
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130
    print(text)
    if args.write_readme:
        replace_readme_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
