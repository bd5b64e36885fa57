"""The benchmark harness every ``bench_*.py`` scenario shares.

A scenario builds a list of :class:`Contender` (a name, the command that starts it,
the URL wrk hits) and calls :func:`measure`, which

1. starts every contender as its own process, pinned with ``taskset`` to the
   gateway CPU, and waits until each answers a GET with the expected status;
2. warms each one up with a short wrk run;
3. runs the same wrk command against each in interleaved rounds (A B C A B C ...),
   wrk pinned to the load CPU;
4. stops everything, also on an error or Ctrl-C,

and returns one :class:`Result` per contender (medians over the rounds).
:func:`markdown_table` and :func:`replace_readme_section` turn results into the
table in ``benchmarks/README.md``. :func:`nginx_upstream` gives the fixed upstream
(nginx, one worker, pinned to the load CPU) that gateways proxy to.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
README = BENCH_DIR / "README.md"

UPSTREAM_BODY = '{"id":1,"name":"demo","ok":true}'
"""What the nginx upstream answers to every request."""

# Debian package that provides each tool the harness runs.
TOOLS: dict[str, str] = {"wrk": "wrk", "nginx": "nginx", "taskset": "util-linux"}

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, a contender that never came up ...)."""


# ---------------------------------------------------------------------------
# Tools and CPUs


def find_tool(name: str) -> str | None:
    """Path of ``name``, also looking in the sbin directories a non-root PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(names: Sequence[str] = tuple(TOOLS), log: Log = log_stderr) -> dict[str, str]:
    """Return ``{tool: path}``, installing missing tools with apt-get (root or sudo -n)."""
    missing = [name for name in names if find_tool(name) is None]
    if missing:
        packages = sorted({TOOLS.get(name, name) for name in missing})
        if shutil.which("apt-get") is None:
            raise BenchError(f"missing {', '.join(missing)} and no apt-get to install them")
        sudo: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
        if sudo and shutil.which("sudo") is None:
            raise BenchError(f"missing {', '.join(missing)}; install {' '.join(packages)} as root")
        log(f"installing {' '.join(packages)} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", *packages],
        ):
            done = subprocess.run([*sudo, *command], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    paths = {name: find_tool(name) for name in names}
    still = [name for name, path in paths.items() if path is None]
    if still:
        raise BenchError(f"still missing after apt-get: {', '.join(still)}")
    return {name: path for name, path in paths.items() if path is not None}


@dataclass(frozen=True)
class Cpus:
    """Which CPU runs the gateway under test and which runs the load (wrk, nginx)."""

    gateway: int
    load: int

    @classmethod
    def pick(cls, log: Log = log_stderr) -> Cpus:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            log("WARNING: one CPU only; gateway and load generator share it")
            return cls(available[0], available[0])
        return cls(available[0], available[1])


def pinned(cpu: int, command: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------
# Processes


class Process:
    """A server under test: its own session (process group), output to a log file."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str]):
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=ROOT,
                start_new_session=True,
            )

    def output_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``timeout``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # Workers left behind by a master that died first.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def wait_until_answers(
    name: str,
    url: str,
    expect_status: int = 200,
    expect_body: bytes | None = None,
    timeout: float = 30.0,
    process: Process | None = None,
) -> None:
    """Poll a GET on ``url`` until it answers as expected; fail early if ``process`` dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise BenchError(
                f"{name} exited with {process.popen.returncode} before it was ready:\n"
                f"$ {' '.join(process.command)}\n{process.output_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (OSError, http.client.HTTPException) as exc:
            status, body = 0, str(exc).encode()
        if status == expect_status and expect_body in (None, body):
            return
        last = f"{status or 'no answer'}: {body[:200].decode(errors='replace')}"
        time.sleep(0.1)
    raise BenchError(
        f"{name}: GET {url} did not answer {expect_status}"
        f"{' with the expected body' if expect_body is not None else ''} "
        f"within {timeout:.0f}s (last: {last})"
        + (f"\n{process.output_tail()}" if process is not None else "")
    )


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Raise KeyboardInterrupt on SIGINT and SIGTERM, so ``finally`` blocks stop the servers.

    SIGINT is set explicitly because a shell starts background jobs with it ignored.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------
# The upstream

NGINX_HEAD = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
"""
"""The start of every generated nginx.conf: one worker, its own paths, keep-alive, up to
``http {``; each configuration below adds its ``server`` (and ``upstream``) blocks."""

NGINX_CONF = NGINX_HEAD + """\

    server {{
        listen 127.0.0.1:{port} backlog=4096;
{extra}        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_upstream(
    workdir: Path, cpu: int, nginx: str | None = None, extra: str = ""
) -> Iterator[str]:
    """Run nginx (one worker, keep-alive) answering :data:`UPSTREAM_BODY`; yield its URL.

    ``extra`` is configuration placed in its ``server`` block before ``location /``
    (say, a location serving a file); indent it by eight spaces.
    """
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, body=UPSTREAM_BODY, extra=extra))
    binary = nginx or find_tool("nginx") or "nginx"
    command = [binary, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    process = Process("nginx", pinned(cpu, command), workdir / "nginx.out", {})
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_answers("nginx", url, 200, UPSTREAM_BODY.encode(), process=process)
        yield url
    finally:
        process.stop()


def _location_blocks(locations: Mapping[str, str]) -> str:
    blocks = []
    for path, body in locations.items():
        if "'" in body or "\\" in body:
            raise BenchError(f"nginx location {path}: the body may not hold ' or \\")
        blocks.append(
            f"        location = {path} {{\n"
            "            default_type application/json;\n"
            f"            return 200 '{body}';\n"
            "        }\n"
        )
    return "".join(blocks)


@contextlib.contextmanager
def nginx_json_upstream(
    workdir: Path, cpu: int, locations: Mapping[str, str], nginx: str | None = None
) -> Iterator[str]:
    """Run nginx answering each exact path of ``locations`` with its JSON body (404 elsewhere).

    The same nginx as :func:`nginx_upstream` (one worker, keep-alive, pinned to ``cpu``);
    yields its base URL without a trailing slash.
    """
    port = free_port()
    conf = workdir / "nginx.conf"
    text = NGINX_CONF.format(dir=workdir, port=port, body=UPSTREAM_BODY, extra="")
    text, count = re.subn(
        r"        location / \{.*?\n        \}\n", lambda _: _location_blocks(locations), text,
        flags=re.S,
    )
    if count != 1:
        raise BenchError("cannot place the locations in the nginx configuration")
    conf.write_text(text)
    binary = nginx or find_tool("nginx") or "nginx"
    command = [binary, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    process = Process("nginx", pinned(cpu, command), workdir / "nginx.out", {})
    try:
        base = f"http://127.0.0.1:{port}"
        path, body = next(iter(locations.items()))
        wait_until_answers("nginx", base + path, 200, body.encode(), process=process)
        yield base
    finally:
        process.stop()


# ---------------------------------------------------------------------------
# wrk


@dataclass(frozen=True)
class WrkOptions:
    """One wrk run: ``wrk -t{threads} -c{connections} -d{duration}s --latency URL``."""

    duration: int = 10
    connections: int = 50
    threads: int = 1
    rounds: int = 3
    warmup: int = 2
    script: str | None = None
    """A Lua script for ``wrk -s`` (e.g. one that sends a request body), or None."""

    def command(self, url: str, duration: int | None = None) -> list[str]:
        seconds = self.duration if duration is None else duration
        script = ["-s", self.script] if self.script else []
        return [
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{seconds}s",
            "--latency",
            *script,
            url,
        ]

    def describe(self) -> str:
        parts = WrkOptions.command(self, "URL")  # never a subclass's extra arguments
        if self.script:
            parts[parts.index(self.script)] = Path(self.script).name
        return " ".join(parts)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--duration", type=int, default=10, help="seconds per run [10]")
        parser.add_argument("--connections", type=int, default=50, help="wrk -c [50]")
        parser.add_argument("--threads", type=int, default=1, help="wrk -t [1]")
        parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
        parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds, 0: none [2]")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WrkOptions:
        if min(args.duration, args.connections, args.threads, args.rounds) < 1:
            raise BenchError("--duration, --connections, --threads and --rounds must be >= 1")
        return cls(args.duration, args.connections, args.threads, args.rounds, args.warmup)


@dataclass(frozen=True)
class WrkResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int = 0
    socket_errors: Mapping[str, int] = field(default_factory=dict)
    bytes_read: float = 0.0
    """What wrk says it read (``... requests in 8.00s, 1.2GB read``), in bytes (wrk rounds it)."""

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.M)
_READ = re.compile(r"^\s*\d+ requests in [^,]+, ([\d.]+)([KMGT]?B) read", re.M)
_UNITS_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


def parse_wrk(output: str) -> WrkResult:
    """Read requests/s, p50, p99 and error counts from ``wrk --latency`` output."""
    rps = _RPS.search(output)
    requests = _REQUESTS.search(output)
    percentiles = {m[1]: float(m[2]) * _UNITS_MS[m[3]] for m in _PERCENTILE.finditer(output)}
    if rps is None or requests is None or set(percentiles) != {"50", "99"}:
        raise BenchError(f"cannot read wrk output (was --latency given?):\n{output}")
    socket_errors: dict[str, int] = {}
    found = _SOCKET.search(output)
    if found:
        counts = (int(n) for n in found.groups())
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), counts, strict=True))
    non_2xx = _NON_2XX.search(output)
    read = _READ.search(output)
    return WrkResult(
        requests_per_sec=float(rps[1]),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        requests=int(requests[1]),
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors={k: v for k, v in socket_errors.items() if v},
        bytes_read=float(read[1]) * _UNITS_BYTES[read[2]] if read else 0.0,
    )


def run_wrk(url: str, options: WrkOptions, cpu: int, duration: int | None = None) -> WrkResult:
    command = pinned(cpu, options.command(url, duration))
    seconds = options.duration if duration is None else duration
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"$ {' '.join(command)}\nexit {done.returncode}\n{done.stderr}")
    return parse_wrk(done.stdout)


# ---------------------------------------------------------------------------
# Contenders and results


@dataclass(frozen=True)
class Contender:
    """One thing to measure.

    ``command`` starts it (pinned to the gateway CPU by :func:`measure`); ``None`` means
    it is already running, like the upstream measured directly. ``url`` is what wrk hits.
    """

    name: str
    url: str
    command: Sequence[str] | None = None
    note: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    expect_status: int = 200
    expect_body: bytes | None = None
    start_timeout: float = 30.0
    ready_url: str | None = None
    """Where the readiness GET goes when it should not be ``url`` (e.g. a 10 MB download)."""
    pin: bool = True
    """Pin the process to the gateway CPU; False lets it use every CPU (a multi-worker run)."""


@dataclass(frozen=True)
class Usage:
    """Memory and CPU time of a contender's processes over a scenario.

    ``before`` is the sum of ``VmRSS`` of its processes when the load starts (bytes);
    ``peak`` the sum of each process's highest resident set during the load: ``VmHWM``
    after resetting it (``/proc/PID/clear_refs``) when the load starts, or, where that
    reset is refused, the highest ``VmRSS`` seen by polling. ``growth`` is
    ``peak - before``. ``cpu_seconds`` is the user plus system time its processes
    used meanwhile (``/proc/PID/stat``).
    """

    before: int
    peak: int
    processes: int
    exact: bool  # every peak is a reset VmHWM, not only polled VmRSS
    cpu_seconds: float = 0.0

    @property
    def growth(self) -> int:
        return self.peak - self.before


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # fields[0] is the state (field 3)
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14, 15


def _status_kb(pid: int, fields: Sequence[str]) -> dict[str, int]:
    """``{field: kB}`` from ``/proc/PID/status`` (empty when the process is gone)."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[key] = int(value.split()[0])
    return found


def process_groups(pgids: Collection[int]) -> dict[int, list[int]]:
    """``{pgid: [pid, ...]}``: the processes of each group (a contender and its children)."""
    found: dict[int, list[int]] = {pgid: [] for pgid in pgids}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) in found:
            found[int(fields[2])].append(int(entry.name))
    return found


class UsageWatch:
    """Samples the resident memory and CPU time of every process of some process groups.

    :meth:`start` records each process's ``VmRSS`` and CPU time and resets its
    ``VmHWM``; a thread then polls ``VmRSS`` every ``interval`` seconds (and looks
    for new processes in the groups every second); :meth:`stop` reads each
    ``VmHWM`` and CPU time and returns a :class:`Usage` per group.
    """

    def __init__(self, groups: Sequence[int], interval: float = 0.02) -> None:
        self.groups = list(groups)
        self.interval = interval
        self.members: dict[int, list[int]] = {g: [] for g in self.groups}
        self.before: dict[int, dict[int, int]] = {g: {} for g in self.groups}  # kB
        self.polled: dict[int, dict[int, int]] = {g: {} for g in self.groups}
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds when first seen
        self.reset: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="memory-watch", daemon=True)

    def _discover(self) -> None:
        self.members = process_groups(self.groups)

    def _sample(self) -> None:
        for group, pids in self.members.items():
            for pid in pids:
                rss = _status_kb(pid, ("VmRSS",)).get("VmRSS")
                if rss is None:
                    continue
                if pid not in self.before[group]:
                    self.before[group][pid] = rss
                    self.cpu[pid] = _cpu_seconds(pid) or 0.0
                    self.reset[pid] = _reset_hwm(pid)
                seen = self.polled[group]
                seen[pid] = max(seen.get(pid, 0), rss)

    def _poll(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - last >= 1.0:
                self._discover()
                last = time.monotonic()
            self._sample()

    def start(self) -> None:
        self._discover()
        self._sample()
        self._thread.start()

    def stop(self) -> dict[int, Usage]:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
        usage = {}
        for group in self.groups:
            before = peak = 0
            cpu = 0.0
            exact = True
            for pid, start in self.before[group].items():
                polled = self.polled[group].get(pid, start)
                hwm = _status_kb(pid, ("VmHWM",)).get("VmHWM") if self.reset.get(pid) else None
                exact = exact and hwm is not None
                before += start
                peak += max(polled, hwm or 0)
                now = _cpu_seconds(pid)
                if now is not None:
                    cpu += now - self.cpu.get(pid, 0.0)
            usage[group] = Usage(before * 1024, peak * 1024, len(self.before[group]), exact,
                                 cpu)
        return usage


def _reset_hwm(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` to its current ``VmRSS`` (``echo 5 > clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


RunHook = Callable[["Result"], None]


@dataclass
class Result:
    contender: Contender
    rounds: list[WrkResult] = field(default_factory=list)
    warmup: WrkResult | None = None
    usage: Usage | None = None
    """Memory and CPU time over the scenario, when :func:`measure` was asked to watch them."""
    checks: list[str] = field(default_factory=list)
    """Problems a scenario found in this contender's runs (e.g. short upstream bodies)."""

    @property
    def name(self) -> str:
        return self.contender.name

    @property
    def requests_per_sec(self) -> float:
        return statistics.median(r.requests_per_sec for r in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds) + len(self.checks)

    def error_summary(self) -> str:
        non_2xx = sum(r.non_2xx_3xx for r in self.rounds)
        sockets: dict[str, int] = {}
        for r in self.rounds:
            for kind, count in r.socket_errors.items():
                sockets[kind] = sockets.get(kind, 0) + count
        parts = [f"{non_2xx} non-2xx/3xx"] if non_2xx else []
        parts += [f"{count} socket {kind}" for kind, count in sockets.items()]
        parts += self.checks
        return ", ".join(parts) or "none"


def measure(
    contenders: Sequence[Contender],
    options: WrkOptions,
    cpus: Cpus,
    workdir: Path,
    log: Log = log_stderr,
    *,
    watch: bool = False,
    before_run: RunHook | None = None,
    after_run: RunHook | None = None,
) -> list[Result]:
    """Start ``contenders``, run interleaved wrk rounds against each, stop them; see module doc.

    With ``watch``, the resident memory and CPU time of each started contender are
    followed from just before the warm-up to the end of the last round
    (:class:`UsageWatch`) and kept in :attr:`Result.usage`. ``before_run`` and
    ``after_run`` are called around each measured run (not the warm-up),
    ``after_run`` once the run is in ``result.rounds``: a scenario can check, say,
    what its upstream received.
    """
    results = [Result(c) for c in contenders]
    processes: list[Process] = []
    groups: dict[str, int] = {}
    watcher: UsageWatch | None = None
    try:
        for contender in contenders:
            process = None
            if contender.command is not None:
                log(f"starting {contender.name}: {' '.join(contender.command)}")
                command = contender.command
                if contender.pin:
                    command = pinned(cpus.gateway, command)
                process = Process(
                    contender.name,
                    command,
                    workdir / f"{_slug(contender.name)}.log",
                    contender.env,
                )
                processes.append(process)
                groups[contender.name] = process.popen.pid  # its own session: pgid == pid
            wait_until_answers(
                contender.name,
                contender.ready_url or contender.url,
                contender.expect_status,
                contender.expect_body,
                contender.start_timeout,
                process,
            )
        if watch:
            watcher = UsageWatch(list(groups.values()))
            watcher.start()
        if options.warmup > 0:
            for result in results:
                log(f"warming up {result.name} ({options.warmup}s)")
                result.warmup = run_wrk(result.contender.url, options, cpus.load,
                                        options.warmup)
        for n in range(1, options.rounds + 1):
            for result in results:
                time.sleep(0.5)  # let the previous run's connections close
                if before_run is not None:
                    before_run(result)
                run = run_wrk(result.contender.url, options, cpus.load)
                result.rounds.append(run)
                if after_run is not None:
                    after_run(result)
                flag = f"  ERRORS: {run.errors}" if run.errors else ""
                log(
                    f"round {n}/{options.rounds} {result.name:<16} "
                    f"{run.requests_per_sec:>10,.0f} req/s  p50 {run.p50_ms:.2f} ms  "
                    f"p99 {run.p99_ms:.2f} ms{flag}"
                )
        if watcher is not None:
            usage = watcher.stop()
            watcher = None
            for result in results:
                group = groups.get(result.name)
                if group is not None:
                    result.usage = usage[group]
        for process in processes:
            if process.popen.poll() is not None:
                raise BenchError(f"{process.name} died during the run:\n{process.output_tail()}")
    finally:
        if watcher is not None:
            watcher.stop()
        for process in reversed(processes):
            process.stop()
    return results


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "contender"


def flag_errors(results: Sequence[Result], log: Log = log_stderr) -> bool:
    """Log a warning per contender that had errors; True when any had."""
    bad = [r for r in results if r.errors]
    for r in bad:
        log(f"WARNING: {r.name} had errors: {r.error_summary()}")
    return bool(bad)


# ---------------------------------------------------------------------------
# Reporting


def run_scenario(run: Callable[[], tuple[list[Result], str]], section: str,
                 write_readme: bool) -> int:
    """A scenario script's ``main`` after its arguments: ``run()`` (servers stopped on
    SIGTERM), then :func:`report`. 1 on a :class:`BenchError`, 130 when interrupted."""
    try:
        with terminate_on_sigterm():
            results, text = run()
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130
    return report(text, section, write_readme, results)


def wrk_main(argv: list[str] | None, doc: str, section: str,
             run: Callable[[WrkOptions], tuple[list[Result], str]]) -> int:
    """The whole ``main`` of a scenario script that takes wrk's options and
    ``--write-readme``: ``doc``'s first line is its description."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the {section} table in benchmarks/README.md")
    args = parser.parse_args(argv)
    return run_scenario(lambda: run(WrkOptions.from_args(args)), section, args.write_readme)


def report(table: str, section: str, write_readme: bool, *runs: Sequence[Result]) -> int:
    """A scenario script's ending: flag errors, print ``table``, maybe write it; the exit code.

    0 when every run of ``runs`` was clean, 2 when any contender had errors.
    """
    had_errors = False
    for results in runs:
        had_errors |= flag_errors(results)
    print(table)
    if write_readme:
        replace_readme_section(section, table)
        log_stderr(f"wrote the {section} table to benchmarks/README.md")
    return 2 if had_errors else 0


def markdown_table(results: Sequence[Result], ratio_to: str | None = None) -> str:
    """A Markdown table: requests/s, p50, p99, errors and requests/s relative to ``ratio_to``."""
    baseline = next((r for r in results if r.name == ratio_to), None)
    header = ["contender", "requests/s", "p50", "p99", "errors"]
    if baseline is not None:
        header.append(f"req/s vs {baseline.name}")
    rows = [header, ["---", "---:", "---:", "---:", "---:"] + (["---:"] if baseline else [])]
    for r in results:
        name = f"{r.name} ({r.contender.note})" if r.contender.note else r.name
        errors = f"**{r.errors}**" if r.errors else "0"
        row = [
            name,
            f"{r.requests_per_sec:,.0f}",
            f"{r.p50_ms:.2f} ms",
            f"{r.p99_ms:.2f} ms",
            errors,
        ]
        if baseline is not None:
            row.append(f"{r.requests_per_sec / baseline.requests_per_sec:.2f}x")
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def ratio_line(results: Sequence[Result], subject: str, baseline: str) -> str:
    """``subject / baseline: 0.93x requests/s, p50 1.05x, p99 1.10x`` (or why it is missing)."""
    by_name = {r.name: r for r in results}
    a, b = by_name.get(subject), by_name.get(baseline)
    if a is None or b is None:
        missing = subject if a is None else baseline
        return f"{subject} / {baseline}: not measured ({missing} was not run)"
    return (
        f"{subject} / {baseline}: **{a.requests_per_sec / b.requests_per_sec:.2f}x** requests/s, "
        f"p50 {a.p50_ms / b.p50_ms:.2f}x, p99 {a.p99_ms / b.p99_ms:.2f}x "
        "(requests/s: higher is better; latency: lower is better)"
    )


def _version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_notes(options: WrkOptions, cpus: Cpus) -> str:
    """How and where the numbers were taken, for under the table."""
    try:
        loop = f"peer proxy on uvloop {metadata.version('uvloop')}"
    except metadata.PackageNotFoundError:
        loop = "peer proxy on asyncio"
    wrk = _version(["wrk", "-v"]).split(" [")[0]
    nginx = _version([find_tool("nginx") or "nginx", "-v"]).replace("nginx version: ", "")
    return (
        f"{time.strftime('%Y-%m-%d')}; {_cpu_model()}, {os.cpu_count()} CPUs; "
        f"gateways on CPU {cpus.gateway}, wrk and nginx on CPU {cpus.load} (`taskset`); "
        f"`{options.describe()}`, median of {options.rounds} interleaved rounds, "
        f"{options.warmup}s warm-up; Python {platform.python_version()}, "
        f"aiohttp {metadata.version('aiohttp')}, {loop}, {nginx}, {wrk}."
    )


def replace_readme_section(name: str, text: str, readme: Path = README) -> None:
    """Put ``text`` between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    content = readme.read_text()
    i, j = content.find(start), content.find(end)
    if i < 0 or j < i:
        raise BenchError(f"{readme} has no {start} ... {end} markers")
    readme.write_text(content[: i + len(start)] + "\n" + text.strip() + "\n" + content[j:])


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A temporary directory for configs and logs; kept with ``BENCH_KEEP=1``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP"):
            log_stderr(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# Standard contenders


def venv_tool(name: str) -> str | None:
    """``name`` beside the running interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def pygate_contender(
    workdir: Path,
    config: str,
    name: str = "pygate",
    note: str = "",
    path: str = "/",
    extra_args: Sequence[str] = (),
) -> Contender | None:
    """pygate serving ``config`` (TOML; ``{port}`` is replaced), or None if not installed.

    Started as ``pygate serve -c CONFIG --listen 127.0.0.1:PORT --log-level warning``
    followed by ``extra_args`` (e.g. ``--workers 2``).
    """
    pygate = venv_tool("pygate")
    if pygate is None:
        return None
    port = free_port()
    config_path = workdir / f"{_slug(name)}.toml"
    config_path.write_text(config.replace("{port}", str(port)))
    listen = f"127.0.0.1:{port}"
    command = [
        pygate,
        "serve",
        "-c",
        str(config_path),
        "--listen",
        listen,
        "--log-level",
        "warning",
        *extra_args,
    ]
    return Contender(name, f"http://{listen}{path}", command, note=note)


def aiohttp_peer_contender(
    upstream: str, name: str = "aiohttp proxy", note: str = "", path: str = "/"
) -> Contender:
    """The minimal hand-written aiohttp proxy in ``peers/aiohttp/proxy.py``."""
    port = free_port()
    script = BENCH_DIR / "peers" / "aiohttp" / "proxy.py"
    listen = f"127.0.0.1:{port}"
    command = [sys.executable, str(script), "--listen", listen, "--upstream", upstream]
    return Contender(name, f"http://{listen}{path}", command, note=note)


# ---------------------------------------------------------------------------
# Requests with headers; a Redis for the contenders


@dataclass(frozen=True)
class HeaderWrkOptions(WrkOptions):
    """:class:`WrkOptions` that send ``headers`` with every request (``wrk -H``).

    ``shown`` gives what :meth:`describe` prints instead of a header's value (a
    bearer token is long and says nothing). Build it from the parsed options with
    :meth:`from_options`; :func:`measure` and :func:`run_wrk` take it as they are.
    """

    headers: tuple[tuple[str, str], ...] = ()
    shown: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_options(
        cls,
        options: WrkOptions,
        headers: Mapping[str, str],
        shown: Mapping[str, str] | None = None,
    ) -> HeaderWrkOptions:
        return cls(
            options.duration,
            options.connections,
            options.threads,
            options.rounds,
            options.warmup,
            options.script,
            headers=tuple(headers.items()),
            shown=tuple((shown or {}).items()),
        )

    def command(self, url: str, duration: int | None = None) -> list[str]:
        base = super().command(url, duration)
        extra: list[str] = []
        for name, value in self.headers:
            extra += ["-H", f"{name}: {value}"]
        return [*base[:-1], *extra, base[-1]]

    def describe(self) -> str:
        shown = dict(self.shown)
        parts = super().describe().split(" ")
        for name, value in self.headers:
            parts[-1:-1] = ["-H", f"'{name}: {shown.get(name, value)}'"]
        return " ".join(parts)


def wait_for_redis(port: int, timeout: float = 10.0, process: Process | None = None) -> None:
    """Poll ``PING`` on 127.0.0.1:``port`` until Redis answers ``+PONG``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise BenchError(f"redis-server exited early:\n{process.output_tail()}")
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        time.sleep(0.05)
    raise BenchError(f"redis-server did not answer PING on port {port} within {timeout:.0f}s")


@contextlib.contextmanager
def redis_server(workdir: Path, cpu: int, executable: str | None = None) -> Iterator[str]:
    """Run ``redis-server`` (no persistence, loopback, a free port, pinned to ``cpu``).

    Yields its URL, ``redis://127.0.0.1:PORT/0``. Raises :class:`BenchError` when
    ``redis-server`` is not installed; check with ``find_tool("redis-server")`` first
    to make Redis optional.
    """
    binary = executable or find_tool("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed")
    port = free_port()
    folder = workdir / "redis"
    folder.mkdir(exist_ok=True)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(folder), "--loglevel", "warning"]
    process = Process("redis", pinned(cpu, command), workdir / "redis.out", {})
    try:
        wait_for_redis(port, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.stop()


def ratio_table(results: Sequence[Result], pairs: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table of ``subject / baseline`` ratios, one row per ``(label, subject,
    baseline)``: requests/s (higher is better), p50 and p99 (lower is better). A pair
    with a contender that was not run says so."""
    by_name = {r.name: r for r in results}
    rows = ["| ratio | requests/s | p50 | p99 |", "| --- | ---: | ---: | ---: |"]
    for label, subject, baseline in pairs:
        a, b = by_name.get(subject), by_name.get(baseline)
        if a is None or b is None:
            missing = subject if a is None else baseline
            rows.append(f"| {label} | not measured ({missing} was not run) | | |")
            continue
        rows.append(
            f"| {label} | **{a.requests_per_sec / b.requests_per_sec:.2f}x** | "
            f"{a.p50_ms / b.p50_ms:.2f}x | {a.p99_ms / b.p99_ms:.2f}x |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------
# nginx as a reverse proxy; the Express gateway

NGINX_PROXY_CONF = NGINX_HEAD + """\

    upstream backend {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 20m;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            client_body_buffer_size 64k;
        }}
    }}
}}
"""


def nginx_proxy_contender(
    workdir: Path, upstream: str, name: str = "nginx proxy", path: str = "/",
    note: str = "one worker, upstream keepalive",
) -> Contender:
    """nginx as a reverse proxy to ``upstream`` (a generated ``nginx.conf``, one worker).

    Keep-alive both ways (``keepalive 256`` to the upstream, HTTP/1.1, ``Connection``
    cleared); request and response buffering off, so bodies stream through as they do
    in the other gateways instead of going to temporary files; bodies up to 20 MB.
    """
    folder = workdir / f"nginx-{_slug(name)}"
    folder.mkdir(exist_ok=True)
    port = free_port()
    host_port = upstream.split("://", 1)[-1].split("/", 1)[0]
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_PROXY_CONF.format(dir=folder, port=port, upstream=host_port))
    binary = find_tool("nginx") or "nginx"
    command = [binary, "-p", str(folder), "-e", str(folder / "nginx-error.log"), "-c", str(conf)]
    return Contender(name, f"http://127.0.0.1:{port}{path}", command, note=note)


EXPRESS_DIR = BENCH_DIR / "peers" / "express"
"""The Node peers: ``server.js`` (the Express gateway) and ``aggregate.js``."""


def npm_installed(folder: Path) -> bool:
    """Whether every dependency in ``folder/package.json`` is in its ``node_modules``."""
    manifest = json.loads((folder / "package.json").read_text())
    return all((folder / "node_modules" / name / "package.json").is_file()
               for name in manifest.get("dependencies", {}))


def npm_install(folder: Path, log: Log = log_stderr) -> bool:
    """Install a Node peer's packages into ``folder`` unless they all are already there."""
    if npm_installed(folder):
        return True
    npm = find_tool("npm")
    if npm is None:
        return False
    lock = (folder / "package-lock.json").is_file()
    command = [npm, "ci" if lock else "install", "--no-audit", "--no-fund", "--omit=dev"]
    log(f"installing a Node peer's packages: {' '.join(command)} (in {folder})")
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        log(f"WARNING: npm failed:\n{done.stderr[-2000:]}")
        return False
    return True


def express_gateway_contender(
    upstream: str,
    name: str = "express gateway",
    note: str = "",
    *,
    checks: bool = True,
    env: Mapping[str, str] | None = None,
    log: Log = log_stderr,
) -> Contender | None:
    """``peers/express/server.js``, or None (with a warning) without node and npm.

    With ``checks=False`` it runs with ``--checks off``: the same code, proxying
    plainly (no JWT, rate limit or identity headers). ``env`` goes to the process
    (``JWT_SECRET``, ``RATE_LIMIT``, ``ACCESS_LOG``); ``NODE_ENV=production`` always.
    """
    node = find_tool("node")
    if node is None or not npm_install(EXPRESS_DIR, log):
        log(f"WARNING: node/npm missing or npm install failed; skipping {name}")
        return None
    listen = f"127.0.0.1:{free_port()}"
    command = [node, str(EXPRESS_DIR / "server.js"), "--listen", listen,
               "--upstream", upstream.rstrip("/"), "--checks", "on" if checks else "off"]
    return Contender(name, f"http://{listen}/", command, note=note,
                     env={"NODE_ENV": "production", **(env or {})})


def node_versions(names: Sequence[str], folder: Path = EXPRESS_DIR) -> str:
    """``node v20.1.0, express 5.1.0, ...``: node's version and installed packages'."""
    parts = []
    node = find_tool("node")
    if node is not None:
        parts.append(f"node {_version([node, '--version'])}")
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            package = json.loads((folder / "node_modules" / name / "package.json").read_text())
            parts.append(f"{name} {package.get('version', '?')}")
    return ", ".join(parts)
