"""Rate limit on vs off: a proxied GET through pygate with only the rate-limit plugin.

Measures, with the same wrk command, in interleaved rounds:

- ``pygate``: no plugins;
- ``pygate rate-limit memory``: ``[plugins.rate-limit]`` with the memory backend;
- ``pygate rate-limit redis``: the same with a Redis backend (a ``redis-server``
  started on CPU 1 beside the upstream and wrk; skipped when not installed).

The limit is never reached (every request passes and gets ``RateLimit-*``
headers), keyed by client IP, sliding window. The numbers to watch are the
ratios to ``pygate`` without the plugin.

    .venv/bin/python benchmarks/bench_ratelimit.py [--duration 10] [--rounds 3] [--write-readme]
"""

from __future__ import annotations

import contextlib
import sys

from common import (
    BenchError,
    Contender,
    Cpus,
    Result,
    WrkOptions,
    ensure_tools,
    find_tool,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    pygate_contender,
    ratio_table,
    redis_server,
    workspace,
    wrk_main,
)

SECTION = "ratelimit"
BARE = "pygate"
MEMORY = "pygate rate-limit memory"
REDIS = "pygate rate-limit redis"

CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["UPSTREAM"]
PLUGINS
[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""

RATE_LIMIT = """
[plugins.rate-limit]
limit = 1000000000
window = "1m"
key = "ip"
backend = "BACKEND"
"""


def contenders(upstream: str, workdir: object, redis_url: str | None) -> list[Contender]:
    found: list[Contender | None] = []
    for name, backend in ((BARE, None), (MEMORY, "memory"), (REDIS, redis_url)):
        if name == REDIS and redis_url is None:
            continue
        plugins = "" if backend is None else RATE_LIMIT.replace("BACKEND", backend)
        config = CONFIG.replace("UPSTREAM", upstream.rstrip("/")).replace("PLUGINS", plugins)
        note = "no plugins" if backend is None else f"rate-limit, {backend.split(':')[0]}"
        found.append(pygate_contender(workdir, config, name, note))  # type: ignore[arg-type]
    if any(c is None for c in found):
        raise BenchError("no pygate executable beside this Python or on PATH")
    return [c for c in found if c is not None]


def run(options: WrkOptions) -> tuple[list[Result], str]:
    ensure_tools()
    cpus = Cpus.pick()
    with workspace("pygate-bench-ratelimit-") as workdir, contextlib.ExitStack() as stack:
        redis_url = None
        if find_tool("redis-server") is not None:
            redis_url = stack.enter_context(redis_server(workdir, cpus.load))
        else:
            log_stderr("WARNING: redis-server not installed; skipping the Redis row")
        with nginx_upstream(workdir, cpus.load) as upstream:
            results = measure(contenders(upstream, workdir, redis_url), options, cpus, workdir)
    pairs = [(f"{r.name} / {BARE}", r.name, BARE) for r in results if r.name != BARE]
    text = "\n\n".join([markdown_table(results, ratio_to=BARE), ratio_table(results, pairs),
                        machine_notes(options, cpus)])
    return results, text


def main(argv: list[str] | None = None) -> int:
    return wrk_main(argv, __doc__ or "", SECTION, run)


if __name__ == "__main__":
    sys.exit(main())
