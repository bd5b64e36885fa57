"""HTTPS at the edge: pygate terminating TLS 1.3 against nginx terminating TLS 1.3.

Measures, with the same wrk command over ``https://`` (keep-alive), in interleaved
rounds, a GET proxied to the fixed nginx upstream of the other scripts:

- ``nginx tls``: nginx (one worker) terminating TLS 1.3 and proxying with keep-alive;
- ``pygate tls``: ``pygate serve`` with ``[gateway.tls]`` (``min_version = "1.3"``);
- ``pygate plain``: the same pygate route without TLS, for what TLS costs pygate.

The certificate is a local CA's for localhost (``pygate.demo.tls``, as ``make
serve-https`` makes it). wrk keeps its connections, so the handshakes are few; the
figures are the cost of encrypting and decrypting the requests and responses.

    .venv/bin/python benchmarks/bench_tls.py [--duration 10] [--rounds 3] [--write-readme]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common import (
    NGINX_HEAD,
    BenchError,
    Contender,
    Cpus,
    Result,
    WrkOptions,
    ensure_tools,
    find_tool,
    free_port,
    machine_notes,
    markdown_table,
    measure,
    nginx_upstream,
    pygate_contender,
    ratio_table,
    workspace,
    wrk_main,
)

from pygate.demo.tls import make_certificates

SECTION = "tls"
NGINX = "nginx tls"
PYGATE = "pygate tls"
PLAIN = "pygate plain"

PYGATE_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.bench]
targets = ["UPSTREAM"]

[[routes]]
name = "bench"
path = "/"
upstream = "bench"
"""

PYGATE_TLS = """
[gateway.tls]
cert = "CERT"
key = "KEY"
min_version = "1.3"
"""

NGINX_TLS = NGINX_HEAD + """\

    upstream bench {{
        server {upstream};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_tls(workdir: Path, upstream: str, cert: Path, key: Path) -> Contender:
    folder = workdir / "nginx-tls"
    folder.mkdir()
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_TLS.format(dir=folder, port=port, cert=cert, key=key,
                                     upstream=upstream.split("//")[1].rstrip("/")))
    binary = find_tool("nginx") or "nginx"
    command = [binary, "-p", str(folder), "-e", str(folder / "nginx-error.log"), "-c", str(conf)]
    return Contender(NGINX, f"https://localhost:{port}/", command,
                     note="TLS 1.3, one worker, keep-alive to the upstream")


def contenders(workdir: Path, upstream: str, cert: Path, key: Path) -> list[Contender]:
    base = PYGATE_CONFIG.replace("UPSTREAM", upstream.rstrip("/"))
    tls = base + PYGATE_TLS.replace("CERT", str(cert)).replace("KEY", str(key))
    found = [pygate_contender(workdir, tls, PYGATE, "TLS 1.3"),
             pygate_contender(workdir, base, PLAIN, "no TLS")]
    if any(c is None for c in found):
        raise BenchError("no pygate executable beside this Python or on PATH")
    mine = [c for c in found if c is not None]
    tls_contender = mine[0]
    # pygate_contender writes an http:// URL; the TLS one is asked over https
    mine[0] = Contender(tls_contender.name, tls_contender.url.replace(
        "http://127.0.0.1", "https://localhost"), tls_contender.command,
        note=tls_contender.note)
    return [nginx_tls(workdir, upstream, cert, key), *mine]


def run(options: WrkOptions) -> tuple[list[Result], str]:
    ensure_tools()
    cpus = Cpus.pick()
    with workspace("pygate-bench-tls-") as workdir:
        ca, cert, key = make_certificates(workdir / "tls")
        os.environ["SSL_CERT_FILE"] = str(ca)  # the readiness checks verify against it
        with nginx_upstream(workdir, cpus.load) as upstream:
            results = measure(contenders(workdir, upstream, cert, key), options, cpus, workdir)
    pairs = [(f"{PYGATE} / {NGINX}", PYGATE, NGINX), (f"{PYGATE} / {PLAIN}", PYGATE, PLAIN)]
    notes = (f"{machine_notes(options, cpus)} wrk over https:// with keep-alive (few "
             "handshakes); the certificate an ECDSA P-256 one from a local CA.")
    text = "\n\n".join([markdown_table(results, ratio_to=NGINX), ratio_table(results, pairs),
                        notes])
    return results, text


def main(argv: list[str] | None = None) -> int:
    return wrk_main(argv, __doc__ or "", SECTION, run)


if __name__ == "__main__":
    sys.exit(main())
