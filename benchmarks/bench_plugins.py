"""Plugins: a proxied GET with JWT, a rate limit and identity headers, through each gateway.

Every request carries a valid HS256 token (``Authorization: Bearer ...``); each
gateway verifies it, counts the caller against an in-memory rate limit that is
never reached, drops any client-sent ``X-User-Id``/``X-User-Role`` and sends the
token's subject and role upstream in them, then proxies to nginx. Measured with
the same wrk command, in interleaved rounds:

- ``pygate+plugins+log``: pygate with jwt, rate-limit (memory), headers and
  logging (JSON lines to a file): the configuration PRODUCT.md section 9 names;
- ``pygate+plugins``: the same without logging;
- ``pygate+plugins redis``: the same with the rate limit in Redis (when
  ``redis-server`` is installed; one is started on a free port);
- ``pygate nocache``: jwt's verified-token cache off (``cache_size = 0``), so the
  token is verified on every request, as the two peers below do;
- ``express gateway``: the Node gateway the tutorials write (Express,
  http-proxy-middleware with a keep-alive agent, jsonwebtoken,
  express-rate-limit's memory store, identity headers), in
  ``peers/express/server.js`` (``npm ci`` runs there when a package is
  missing from ``node_modules``);
- ``aiohttp+checks``: ``peers/aiohttp/proxy_checks.py``, the minimal aiohttp
  proxy with the same checks written inline (pyjwt, a dict limiter, the headers);
- for reference, ``pygate bare`` (no plugins) and ``aiohttp proxy`` (no checks).

Before measuring, each gateway is started once against an echo upstream and
checked: 401 without a token; with one, 200, ``RateLimit-*`` headers, and
exactly ``X-User-Id: alice`` and ``X-User-Role: admin`` upstream although the
client sent forged copies.

    .venv/bin/python benchmarks/bench_plugins.py [--duration 10] [--connections 50]
        [--rounds 3] [--skip-verify] [--write-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from common import (
    BENCH_DIR,
    UPSTREAM_BODY,
    BenchError,
    Contender,
    Cpus,
    HeaderWrkOptions,
    Process,
    Result,
    WrkOptions,
    aiohttp_peer_contender,
    ensure_tools,
    express_gateway_contender,
    find_tool,
    free_port,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    node_versions,
    pygate_contender,
    ratio_table,
    redis_server,
    report,
    terminate_on_sigterm,
    wait_until_answers,
    workspace,
)

SECTION = "plugins"

PYGATE_LOG = "pygate+plugins+log"
PYGATE = "pygate+plugins"
PYGATE_REDIS = "pygate+plugins redis"
PYGATE_NOCACHE = "pygate nocache"
EXPRESS = "express gateway"
CHECKS = "aiohttp+checks"
PYGATE_BARE = "pygate bare"
PLAIN = "aiohttp proxy"
EXPRESS_LOG = "express gateway+log"
CHECKS_LOG = "aiohttp+checks+log"

SECRET = "pygate-benchmark-secret-0123456789abcdef"  # HS256 wants 32 bytes or more
USER, ROLE = "alice", "admin"
LIMIT = 1_000_000_000  # per minute and caller: never reached
CHECKS_SCRIPT = BENCH_DIR / "peers" / "aiohttp" / "proxy_checks.py"

PYGATE_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["{upstream}"]
{plugins}
[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""

PLUGINS = """
[plugins.jwt]
secret = "{secret}"
algorithms = ["HS256"]
{jwt_extra}
[plugins.rate-limit]
limit = {limit}
window = "1m"
algorithm = "fixed-window"
key = "consumer"
backend = "{backend}"

[plugins.headers]
identity = {{ X-User-Id = "id", X-User-Role = "roles" }}
"""

LOGGING = """
[plugins.logging]
format = "json"
path = "{path}"
"""


def make_token() -> str:
    claims = {"sub": USER, "role": ROLE, "exp": int(time.time()) + 86_400}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass(frozen=True)
class Spec:
    """A contender plus what the verification needs to know about it."""

    contender: Contender
    checks: bool  # it enforces JWT, the rate limit and identity headers
    access_log: Path | None = None


def pygate_spec(workdir: Path, upstream: str, name: str, note: str, *, checks: bool = True,
                backend: str = "memory", jwt_extra: str = "",
                access_log: Path | None = None) -> Spec | None:
    plugins = ""
    if checks:
        plugins = PLUGINS.format(secret=SECRET, jwt_extra=jwt_extra, limit=LIMIT,
                                 backend=backend)
    if access_log is not None:
        plugins += LOGGING.format(path=access_log)
    config = PYGATE_CONFIG.replace("{upstream}", upstream).replace("{plugins}", plugins)
    contender = pygate_contender(workdir, config, name, note)
    if contender is None:
        return None
    if checks:
        contender = replace(contender, expect_status=401)  # up, and refusing anonymous calls
    return Spec(contender, checks, access_log)


def express_spec(upstream: str, name: str = EXPRESS, access_log: Path | None = None,
                 ) -> Spec | None:
    """The Express gateway with its checks on (and an access log to ``access_log``)."""
    env = {"JWT_SECRET": SECRET, "RATE_LIMIT": str(LIMIT)}
    note = "Express + http-proxy-middleware + jsonwebtoken + express-rate-limit"
    if access_log is not None:
        env["ACCESS_LOG"] = str(access_log)
        note += ", JSON access log to a file"
    contender = express_gateway_contender(upstream, name, note, env=env)
    if contender is None:
        return None
    return Spec(replace(contender, expect_status=401), checks=True, access_log=access_log)


def checks_spec(upstream: str, name: str = CHECKS, access_log: Path | None = None) -> Spec:
    """``peers/aiohttp/proxy_checks.py`` (and its JSON access log to ``access_log``)."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    command = [sys.executable, str(CHECKS_SCRIPT), "--listen", listen, "--upstream", upstream]
    env = {"JWT_SECRET": SECRET, "RATE_LIMIT": str(LIMIT)}
    note = "pyjwt, dict limiter, identity headers"
    if access_log is not None:
        env["ACCESS_LOG"] = str(access_log)
        note += ", JSON access log to a file"
    contender = Contender(name, f"http://{listen}/", command, note=note, env=env,
                          expect_status=401)
    return Spec(contender, checks=True, access_log=access_log)


def peer_specs(upstream: str, workdir: Path, *, logging: bool) -> list[Spec]:
    """The three-way comparison ``bench_all.py`` runs: pygate with jwt, rate-limit (memory)
    and headers, the Express gateway and the aiohttp proxy with the same checks; with
    ``logging``, each also writes a JSON access line per request to its own file."""
    target = upstream.rstrip("/")
    if logging:
        found = [
            pygate_spec(workdir, target, PYGATE_LOG, "jwt, rate-limit, headers, logging to a file",
                        access_log=workdir / "pygate-access.jsonl"),
            express_spec(target, EXPRESS_LOG, access_log=workdir / "express-access.jsonl"),
            checks_spec(target, CHECKS_LOG, access_log=workdir / "aiohttp-access.jsonl"),
        ]
    else:
        found = [
            pygate_spec(workdir, target, PYGATE, "jwt, rate-limit (memory), headers"),
            express_spec(target),
            checks_spec(target),
        ]
    if found[0] is None:
        raise BenchError("no pygate executable beside this Python or on PATH")
    return [spec for spec in found if spec is not None]


def specs(upstream: str, workdir: Path, redis_url: str | None, *,
          expect_body: bool) -> list[Spec]:
    """Every contender, proxying to ``upstream``; files go to ``workdir``."""
    target = upstream.rstrip("/")
    found: list[Spec | None] = [
        pygate_spec(workdir, target, PYGATE_LOG, "jwt, rate-limit, headers, logging to a file",
                    access_log=workdir / "access.jsonl"),
        pygate_spec(workdir, target, PYGATE, "jwt, rate-limit (memory), headers"),
    ]
    if redis_url is not None:
        found.append(pygate_spec(workdir, target, PYGATE_REDIS,
                                 "jwt, rate-limit (Redis), headers", backend=redis_url))
    found += [
        pygate_spec(workdir, target, PYGATE_NOCACHE, "as pygate+plugins, jwt cache_size = 0",
                    jwt_extra="cache_size = 0\n"),
        express_spec(target),
        checks_spec(target),
        pygate_spec(workdir, target, PYGATE_BARE, "no plugins", checks=False),
    ]
    plain = aiohttp_peer_contender(target, PLAIN, note="no checks")
    found.append(Spec(plain, checks=False))
    if any(spec is None for spec in found[:2]):
        log_stderr("WARNING: no pygate executable beside this Python or on PATH; skipping it")
    result = [spec for spec in found if spec is not None]
    if expect_body:  # plain proxies must pass nginx's own body through
        result = [replace(s, contender=replace(s.contender, expect_body=UPSTREAM_BODY.encode()))
                  if not s.checks else s for s in result]
    return result


# ---------------------------------------------------------------------------
# Verification against an echo upstream


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def echo_upstream() -> Iterator[str]:
    """A loopback HTTP server answering each GET with the request headers it received."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers.items()), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def check_one(spec: Spec, token: str) -> list[str]:
    """What is wrong with one running contender (empty when nothing is)."""
    url = spec.contender.url
    if not spec.checks:
        status, _, _ = get(url, {})
        return [] if status == 200 else [f"GET answered {status}, expected 200"]
    problems: list[str] = []
    status, _, _ = get(url, {})
    if status != 401:
        problems.append(f"without a token: {status}, expected 401")
    forged = {"Authorization": f"Bearer {token}", "X-User-Id": "mallory", "X-User-Role": "root"}
    status, headers, body = get(url, forged)
    if status != 200:
        return [*problems, f"with a valid token: {status}, expected 200: {body[:200]!r}"]
    seen = json.loads(body)["headers"]
    ids = [value for name, value in seen if name.lower() == "x-user-id"]
    roles = [value for name, value in seen if name.lower() == "x-user-role"]
    if ids != [USER] or roles != [ROLE]:
        problems.append(f"upstream saw X-User-Id {ids} and X-User-Role {roles}, "
                        f"expected [{USER!r}] and [{ROLE!r}]")
    if not any(name.lower() == "ratelimit-remaining" for name in headers):
        problems.append("no RateLimit-Remaining header on the response")
    return problems


def verify(found: list[Spec], workdir: Path, token: str) -> None:
    """Start each contender against the echo upstream, check it, stop it; raise on a problem."""
    failures: list[str] = []
    for spec in found:
        contender = spec.contender
        assert contender.command is not None
        log_path = workdir / (re.sub(r"[^A-Za-z0-9]+", "-", contender.name) + ".log")
        process = Process(contender.name, contender.command, log_path, contender.env)
        try:
            wait_until_answers(contender.name, contender.url, contender.expect_status, None,
                               contender.start_timeout, process)
            problems = check_one(spec, token)
        finally:
            process.stop()
        if spec.access_log is not None and not problems:
            lines = [json.loads(line) for line in spec.access_log.read_text().splitlines()]
            if not any(line.get("status") == 200 and line.get("consumer") == USER
                       for line in lines):
                problems.append(f"no access line for the checked request in {spec.access_log}")
        verdict = "ok" if not problems else "; ".join(problems)
        log_stderr(f"verify {contender.name:<22} {verdict}")
        failures += [f"{contender.name}: {problem}" for problem in problems]
    if failures:
        raise BenchError("verification failed:\n  " + "\n  ".join(failures))


# ---------------------------------------------------------------------------
# The run


RATIOS = [
    ("pygate (jwt, rate limit, headers, logging) / Express", PYGATE_LOG, EXPRESS),
    ("pygate (jwt, rate limit, headers) / Express", PYGATE, EXPRESS),
    ("pygate (jwt, rate limit, headers, logging) / aiohttp with checks", PYGATE_LOG, CHECKS),
    ("pygate (jwt, rate limit, headers) / aiohttp with checks", PYGATE, CHECKS),
    ("pygate, every token verified / aiohttp with checks", PYGATE_NOCACHE, CHECKS),
    ("pygate plugins on / off", PYGATE, PYGATE_BARE),
    ("aiohttp checks on / off", CHECKS, PLAIN),
    ("logging on / off (pygate with plugins)", PYGATE_LOG, PYGATE),
    ("rate limit in Redis / in memory (pygate with plugins)", PYGATE_REDIS, PYGATE),
]


def tool_versions() -> str:
    parts = [node_versions(["express", "http-proxy-middleware", "jsonwebtoken",
                            "express-rate-limit"])]
    parts.append(f"PyJWT {jwt.__version__}")
    redis = find_tool("redis-server")
    if redis is not None:
        done = subprocess.run([redis, "--version"], capture_output=True, text=True, check=False)
        words = done.stdout.split()
        version = next((w.split("=", 1)[1] for w in words if w.startswith("v=")), "?")
        parts.append(f"redis-server {version}")
    return ", ".join(part for part in parts if part)


def logged_lines(path: Path) -> tuple[int, int]:
    """``(lines, bytes)`` of an access log file (zeros when it does not exist)."""
    if not path.is_file():
        return 0, 0
    with path.open("rb") as lines:
        return sum(1 for _ in lines), path.stat().st_size


def header_options(options: WrkOptions, token: str) -> HeaderWrkOptions:
    return HeaderWrkOptions.from_options(options, {"Authorization": f"Bearer {token}"},
                                         shown={"Authorization": "Bearer <HS256 token>"})


def measure_peers(options: WrkOptions, cpus: Cpus, workdir: Path, *, logging: bool,
                  skip_verify: bool = False) -> tuple[list[Result], str]:
    """The three-way comparison of :func:`peer_specs`, verified first against the echo
    upstream (unless ``skip_verify``), then measured against nginx; returns the results
    and the README section (the table, pygate / each peer, the notes)."""
    token = make_token()
    with_header = header_options(options, token)
    if not skip_verify:
        verify_dir = workdir / "verify"
        verify_dir.mkdir(exist_ok=True)
        with echo_upstream() as echo:
            verify(peer_specs(echo, verify_dir, logging=logging), verify_dir, token)
    with nginx_upstream(workdir, cpus.load) as upstream:
        found = peer_specs(upstream, workdir, logging=logging)
        results = measure([s.contender for s in found], with_header, cpus, workdir)
    subject, baseline = (PYGATE_LOG, CHECKS_LOG) if logging else (PYGATE, CHECKS)
    pairs = [(f"{subject} / {r.name}", subject, r.name) for r in results if r.name != subject]
    notes = machine_notes(with_header, cpus) + f" Peers: {tool_versions()}."
    if logging:
        written = []
        for spec in found:
            if spec.access_log is not None:
                lines, size = logged_lines(spec.access_log)
                written.append(f"{spec.contender.name} {lines:,} lines ({size / 1e6:.0f} MB)")
        notes += " JSON access lines written: " + ", ".join(written) + "."
    text = "\n\n".join([markdown_table(results, ratio_to=baseline),
                         ratio_table(results, pairs), notes])
    return results, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--skip-verify", action="store_true",
                        help="do not check each gateway against an echo upstream first")
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the {SECTION} table in benchmarks/README.md")
    args = parser.parse_args(argv)
    token = make_token()
    try:
        options = header_options(WrkOptions.from_args(args), token)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            with workspace("pygate-bench-plugins-") as workdir, contextlib.ExitStack() as stack:
                redis_url = None
                if find_tool("redis-server") is not None:
                    redis_url = stack.enter_context(redis_server(workdir, cpus.load))
                else:
                    log_stderr("WARNING: redis-server not installed; skipping the Redis row")
                if not args.skip_verify:
                    verify_dir = workdir / "verify"
                    verify_dir.mkdir()
                    with echo_upstream() as echo:
                        verify(specs(echo, verify_dir, redis_url, expect_body=False), verify_dir,
                               token)
                with nginx_upstream(workdir, cpus.load) as upstream:
                    found = specs(upstream, workdir, redis_url, expect_body=True)
                    results = measure([s.contender for s in found], options, cpus, workdir)
                logged, size = logged_lines(workdir / "access.jsonl")
                notes = machine_notes(options, cpus) + f" Peers: {tool_versions()}."
                if logged:
                    notes += (f" {PYGATE_LOG} wrote {logged:,} JSON lines "
                              f"({size / 1e6:.0f} MB) to its file.")
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130

    table = "\n\n".join(
        [markdown_table(results, ratio_to=CHECKS), ratio_table(results, RATIOS), notes]
    )
    return report(table, SECTION, args.write_readme, results)


if __name__ == "__main__":
    sys.exit(main())
