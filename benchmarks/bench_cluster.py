"""One node vs two nodes behind nginx, with the Redis-backed rate limit on.

Measures, with the same wrk command, in interleaved rounds:

- ``nginx -> 1 node``: a front nginx proxying (keep-alive) to one ``pygate serve`` node;
- ``nginx -> 2 nodes``: a second front nginx proxying to that node and a second one.

Both nodes run the same configuration: a proxied GET with the ``rate-limit`` plugin
keyed by client IP against one ``redis-server`` (the limit never reached), so every
request makes one Redis round trip shared by the nodes (docs/deploy.md). The upstream is
the fixed nginx of the other scripts. Node A is pinned to the gateway CPU; node B to the
load CPU, beside wrk, the front nginx, Redis and the upstream: on a two-CPU machine a
second node has no CPU of its own, and the ratio shows what it adds there.

    .venv/bin/python benchmarks/bench_cluster.py [--duration 10] [--rounds 3] [--write-readme]
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from common import (
    NGINX_HEAD,
    Contender,
    Cpus,
    Process,
    Result,
    WrkOptions,
    ensure_tools,
    find_tool,
    free_port,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    pinned,
    pygate_contender,
    ratio_table,
    redis_server,
    wait_until_answers,
    workspace,
    wrk_main,
)

SECTION = "cluster"
ONE = "nginx -> 1 node"
TWO = "nginx -> 2 nodes"

NODE = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["UPSTREAM"]

[plugins.rate-limit]
limit = 1000000000
window = "1m"
key = "ip"
backend = "REDIS"

[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""

FRONT = NGINX_HEAD + """\

    upstream pygate {{
{servers}
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://pygate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@contextlib.contextmanager
def node(workdir: Path, name: str, upstream: str, redis: str, cpu: int) -> Iterator[str]:
    """A pygate node pinned to ``cpu``; yields its URL once it answers."""
    config = NODE.replace("UPSTREAM", upstream.rstrip("/")).replace("REDIS", redis)
    contender = pygate_contender(workdir, config, name)
    assert contender is not None and contender.command is not None
    process = Process(name, pinned(cpu, contender.command), workdir / f"{name}.log", {})
    try:
        wait_until_answers(name, contender.url, 200, None, process=process)
        yield contender.url
    finally:
        process.stop()


def front(workdir: Path, name: str, nodes: Sequence[str], cpu: int) -> Contender:
    """A front nginx (one worker) over ``nodes``: what wrk measures."""
    folder = workdir / name.replace(" ", "-").replace(">", "")
    folder.mkdir()
    port = free_port()
    servers = "\n".join(f"        server {url.split('//')[1].rstrip('/')};" for url in nodes)
    conf = folder / "nginx.conf"
    conf.write_text(FRONT.format(dir=folder, port=port, servers=servers))
    binary = find_tool("nginx") or "nginx"
    command = pinned(cpu, [binary, "-p", str(folder), "-e", str(folder / "nginx-error.log"),
                           "-c", str(conf)])
    note = f"front nginx over {len(nodes)} pygate node{'s' if len(nodes) > 1 else ''}"
    return Contender(name, f"http://127.0.0.1:{port}/", command, note=note, pin=False)


def run(options: WrkOptions) -> tuple[list[Result], str]:
    ensure_tools([*("wrk", "nginx", "taskset"), "redis-server"])
    cpus = Cpus.pick()
    with workspace("pygate-bench-cluster-") as workdir, \
            redis_server(workdir, cpus.load) as redis, \
            nginx_upstream(workdir, cpus.load) as upstream, \
            node(workdir, "node-a", upstream, redis, cpus.gateway) as a, \
            node(workdir, "node-b", upstream, redis, cpus.load) as b:
        contenders = [front(workdir, ONE, [a], cpus.load), front(workdir, TWO, [a, b], cpus.load)]
        results = measure(contenders, options, cpus, workdir)
    pairs = [(f"{TWO} / {ONE}", TWO, ONE)]
    notes = (f"{machine_notes(options, cpus)} Node A on CPU {cpus.gateway}; node B, the front "
             f"nginx, Redis, the upstream and wrk on CPU {cpus.load}.")
    text = "\n\n".join([markdown_table(results, ratio_to=ONE), ratio_table(results, pairs),
                        notes])
    return results, text


def main(argv: list[str] | None = None) -> int:
    return wrk_main(argv, __doc__ or "", SECTION, run)


if __name__ == "__main__":
    sys.exit(main())
