"""The plugin chain's cost: a proxied GET with and without jwt + rate-limit + headers.

PRODUCT.md section 9: the same GET with ``jwt``, ``rate-limit`` (memory, never
reached) and ``headers`` on keeps at least 80% of the requests/s of that GET
with no plugin. Measured with the same wrk command, in interleaved rounds:

- ``bare``: pygate with no plugin;
- ``chain``: pygate with jwt (every request carries a valid HS256 token),
  rate-limit (memory, fixed window, keyed by consumer) and headers (identity
  headers upstream);

for this checkout, and with ``--before REV`` also for another revision of the
repository (core and plugins, exported by ``git archive`` and run from there
through ``PYTHONPATH``): ``bare (REV)`` and ``chain (REV)``, so a restructuring
is compared with what it replaced in the same run.

    .venv/bin/python benchmarks/bench_chain.py [--before REV] [--duration 10] [--rounds 3]
        [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jwt
from common import (
    BENCH_DIR,
    BenchError,
    Contender,
    Cpus,
    HeaderWrkOptions,
    Result,
    WrkOptions,
    ensure_tools,
    free_port,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    ratio_table,
    run_scenario,
    workspace,
)

SECTION = "chain"
SECRET = "pygate-benchmark-secret-0123456789abcdef"
CHAIN_PLUGINS = ("jwt", "rate-limit", "headers")

CONFIG = """\
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

PLUGINS = f"""
[plugins.jwt]
secret = "{SECRET}"
algorithms = ["HS256"]

[plugins.rate-limit]
limit = 1000000000
window = "1m"
algorithm = "fixed-window"
key = "consumer"

[plugins.headers]
identity = {{ X-User-Id = "id", X-User-Role = "roles" }}
"""


def token() -> str:
    claims = {"sub": "alice", "role": "admin", "exp": int(time.time()) + 86_400}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def export(rev: str, into: Path) -> Path:
    """The repository at ``rev`` (``git archive``), unpacked under ``into``."""
    root = BENCH_DIR.parent
    archive = into / "before.tar"
    with archive.open("wb") as out:
        done = subprocess.run(["git", "-C", str(root), "archive", rev], stdout=out,
                              stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise BenchError(f"git archive {rev}: {done.stderr.decode().strip()}")
    tree = into / "before"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def contender(workdir: Path, upstream: str, name: str, *, chain: bool,
              source: Path | None = None) -> Contender:
    """pygate started as ``python -m pygate serve``; from ``source`` when given (its core
    and the chain's plugins first on ``PYTHONPATH``, ahead of the installed ones)."""
    port = free_port()
    path = workdir / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.toml"
    path.write_text(CONFIG.replace("{port}", str(port)).replace("{upstream}", upstream)
                    .replace("{plugins}", PLUGINS if chain else ""))
    listen = f"127.0.0.1:{port}"
    env: dict[str, str] = {}
    if source is not None:
        paths = [str(source)] + [str(source / "plugins" / p) for p in CHAIN_PLUGINS]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    command = [sys.executable, "-m", "pygate", "serve", "-c", str(path), "--listen", listen,
               "--log-level", "warning"]
    note = "jwt + rate-limit + headers" if chain else "no plugin"
    return Contender(name, f"http://{listen}/", command, note=note, env=env,
                     expect_status=401 if chain else 200)


def run(options: WrkOptions, before: str | None) -> tuple[list[Result], str]:
    ensure_tools()
    cpus = Cpus.pick()
    wrk = HeaderWrkOptions.from_options(options, {"Authorization": f"Bearer {token()}"},
                                        {"Authorization": "Bearer <HS256 token>"})
    with workspace("pygate-bench-chain-") as workdir, \
            nginx_upstream(workdir, cpus.load) as upstream:
        upstream = upstream.rstrip("/")
        contenders = [contender(workdir, upstream, "bare", chain=False),
                      contender(workdir, upstream, "chain", chain=True)]
        pairs = [("chain / bare", "chain", "bare")]
        if before is not None:
            tree = export(before, workdir)
            old_bare, old_chain = f"bare ({before})", f"chain ({before})"
            contenders += [contender(workdir, upstream, old_bare, chain=False, source=tree),
                           contender(workdir, upstream, old_chain, chain=True, source=tree)]
            pairs += [(f"chain / bare at {before}", old_chain, old_bare),
                      (f"bare: now / {before}", "bare", old_bare),
                      (f"chain: now / {before}", "chain", old_chain)]
        results = measure(contenders, wrk, cpus, workdir)
    text = "\n\n".join([markdown_table(results, ratio_to="bare"),
                        ratio_table(results, pairs), machine_notes(wrk, cpus)])
    return results, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--before", metavar="REV",
                        help="also measure this revision of the repository (e.g. a commit)")
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the {SECTION} table in benchmarks/README.md")
    args = parser.parse_args(argv)
    return run_scenario(lambda: run(WrkOptions.from_args(args), args.before), SECTION,
                        args.write_readme)


if __name__ == "__main__":
    sys.exit(main())
