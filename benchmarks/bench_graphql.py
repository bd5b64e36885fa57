"""GraphQL: the README's query through pygate, a hand-written Node gateway, and an aggregate route.

The upstream is one nginx answering the three REST services' JSON (``/users/1``,
``/orders`` and ``/products``, whatever their query string). The query is the
README's ``{ me { name orders { id total items { quantity product { name } } } } }``
over the demo schema (``pygate/demo/schema.graphql``), sent as a GraphQL-over-HTTP
POST with ``X-User-Id: 1``; it costs three upstream calls in every contender:

- ``pygate graphql``: ``pygate serve`` with a GraphQL route, ``Query.me`` from the
  header, ``User.orders`` and ``Item.product`` batched (one call for all parents);
- ``node graphql``: the same schema in a gateway written by hand with graphql-js,
  the graphql-http server and DataLoader batching, calls through undici
  (``peers/graphql/gateway.js``);
- ``pygate aggregate``: pygate's aggregate route making the same three calls, one
  after the other (``GET /agg/1``: the user, then its orders, then the products of
  its first item), answering the three results composed.

Every contender must answer the expected bytes (both GraphQL gateways the very same)
before it is measured. PRODUCT.md section 9: the GraphQL query is served at no less
than half the aggregate route's requests/s; the issue asks for at least the Node
gateway's.

    .venv/bin/python benchmarks/bench_graphql.py [--duration 10] [--connections 50]
        [--rounds 3] [--write-readme]

Node and npm are needed for the Node peer (its packages are installed with ``npm ci``
into ``peers/graphql/node_modules`` on first use); without them that row is skipped
with a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

from common import (
    BENCH_DIR,
    ROOT,
    BenchError,
    Contender,
    Cpus,
    Result,
    WrkOptions,
    ensure_tools,
    find_tool,
    free_port,
    log_stderr,
    machine_notes,
    markdown_table,
    measure,
    nginx_json_upstream,
    node_versions,
    npm_install,
    pygate_contender,
    ratio_table,
    report,
    terminate_on_sigterm,
    workspace,
)

SECTION = "graphql"
PYGATE = "pygate graphql"
NODE = "node graphql"
AGGREGATE = "pygate aggregate"
NODE_DIR = BENCH_DIR / "peers" / "graphql"
SCHEMA = ROOT / "pygate" / "demo" / "schema.graphql"

QUERY = "{ me { name orders { id total items { quantity product { name } } } } }"
BODY = json.dumps({"query": QUERY}, separators=(",", ":"))

LOCATIONS = {
    "/users/1": '{"id":"1","name":"Alice Demo","email":"alice@example.com","role":"admin",'
                '"address":{"city":"Lisbon","country":"PT"}}',
    "/orders": '[{"id":"100","userId":"1","total":59.9,"status":"shipped","items":['
               '{"productId":"1001","quantity":2,"price":19.95},'
               '{"productId":"1002","quantity":1,"price":20.0}]},'
               '{"id":"101","userId":"1","total":12.5,"status":"pending","items":['
               '{"productId":"1003","quantity":1,"price":12.5}]}]',
    "/products": '[{"id":"1001","name":"Widget","price":19.95,"stock":120},'
                 '{"id":"1002","name":"Gadget","price":20.0,"stock":35},'
                 '{"id":"1003","name":"Sprocket","price":12.5,"stock":0}]',
}
EXPECTED_GRAPHQL = (
    b'{"data":{"me":{"name":"Alice Demo","orders":[{"id":"100","total":59.9,"items":['
    b'{"quantity":2,"product":{"name":"Widget"}},{"quantity":1,"product":{"name":"Gadget"}}]},'
    b'{"id":"101","total":12.5,"items":[{"quantity":1,"product":{"name":"Sprocket"}}]}]}}}')
EXPECTED_AGGREGATE = json.dumps(
    {"user": json.loads(LOCATIONS["/users/1"]), "orders": json.loads(LOCATIONS["/orders"]),
     "products": json.loads(LOCATIONS["/products"])},
    separators=(",", ":"), ensure_ascii=False).encode()

# wrk: the GraphQL contenders get the POST, the aggregate route a GET; both carry the header.
WRK_LUA = """\
local body = [[BODY]]
local request_bytes
function init(args)
  if string.sub(wrk.path, 1, 8) == "/graphql" then
    request_bytes = wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                            ["X-User-Id"] = "1"}, body)
  else
    request_bytes = wrk.format("GET", nil, {["X-User-Id"] = "1"})
  end
end
function request()
  return request_bytes
end
""".replace("BODY", BODY)

PYGATE_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[upstreams.users]
targets = ["{upstream}"]

[upstreams.orders]
targets = ["{upstream}"]

[upstreams.products]
targets = ["{upstream}"]

[[routes]]
name = "graphql"
path = "/graphql"
[routes.graphql]
schema = "{schema}"
[routes.graphql.resolvers."Query.me"]
upstream = "users"
path = "/users/{header.X-User-Id}"
[routes.graphql.resolvers."User.orders"]
upstream = "orders"
path = "/orders"
query = { userId = "{parent.id}" }
batch = { key = "userId" }
[routes.graphql.resolvers."Item.product"]
upstream = "products"
path = "/products"
query = { id = "{parent.productId}" }
batch = { key = "id" }

[[routes]]
name = "aggregate"
path = "/agg/{id}"
methods = ["GET"]
[routes.aggregate.calls.user]
upstream = "users"
path = "/users/{id}"
[routes.aggregate.calls.orders]
upstream = "orders"
path = "/orders"
query = { userId = "{user.id}" }
[routes.aggregate.calls.products]
upstream = "products"
path = "/products"
query = { id = "{orders.0.items.0.productId}" }
"""

READY = "?query=%7B__typename%7D"
READY_BODY = b'{"data":{"__typename":"Query"}}'


def node_contender(upstream: str) -> Contender | None:
    """The Node peer, installing its packages with npm when needed; None without node."""
    node = find_tool("node")
    if node is None or not npm_install(NODE_DIR):
        log_stderr("WARNING: node/npm missing or npm install failed; skipping the Node peer")
        return None
    listen = f"127.0.0.1:{free_port()}"
    command = [node, str(NODE_DIR / "gateway.js"), "--listen", listen,
               "--upstream", upstream, "--schema", str(SCHEMA)]
    return Contender(NODE, f"http://{listen}/graphql", command,
                     note="graphql-js + graphql-http + DataLoader", env={"NODE_ENV": "production"},
                     ready_url=f"http://{listen}/graphql{READY}", expect_body=READY_BODY)


def contenders(upstream: str, workdir: Path) -> list[Contender]:
    config = (PYGATE_CONFIG.replace("{upstream}", upstream)
              .replace("{schema}", str(SCHEMA)))
    found: list[Contender] = []
    graphql = pygate_contender(workdir, config, PYGATE, note="batched resolvers",
                               path="/graphql")
    aggregate = pygate_contender(workdir, config, AGGREGATE, note="the same three calls",
                                 path="/agg/1")
    if graphql is None or aggregate is None:
        log_stderr("WARNING: no pygate executable beside this Python or on PATH; skipping it")
    else:
        found.append(replace(graphql, ready_url=graphql.url + READY, expect_body=READY_BODY))
        found.append(replace(aggregate, expect_body=None))
    node = node_contender(upstream)
    if node is not None:
        found.insert(1, node)
    return found


def verify(found: list[Contender]) -> None:
    """Each contender answers the expected bytes to the measured request."""
    for contender in found:
        graphql = contender.url.endswith("/graphql")
        headers = {"X-User-Id": "1"}
        if graphql:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(contender.url, headers=headers,
                                         data=BODY.encode() if graphql else None)
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = answer.read()
        expected = EXPECTED_GRAPHQL if graphql else EXPECTED_AGGREGATE
        if body != expected:
            raise BenchError(f"{contender.name} answered {body[:300]!r}, expected "
                             f"{expected[:300]!r}")
        log_stderr(f"checked {contender.name}: the expected {len(body)} bytes")


def load() -> str:
    """The machine's 1-minute load average (other work shares its two CPUs)."""
    return f"{os.getloadavg()[0]:.2f}"


def render(results: list[Result], notes: str) -> str:
    parts = [
        markdown_table(results, ratio_to=AGGREGATE),
        ratio_table(results, [
            (f"{PYGATE} / {NODE}", PYGATE, NODE),
            (f"{PYGATE} / {AGGREGATE}", PYGATE, AGGREGATE),
            (f"{NODE} / {AGGREGATE}", NODE, AGGREGATE),
        ]),
        notes + f" Query: `{QUERY}`, POSTed with `X-User-Id: 1`; three upstream calls each "
        "(the aggregate route: `GET /agg/1`). Peers: "
        + node_versions(["graphql", "graphql-http", "dataloader", "undici"], NODE_DIR) + ".",
    ]
    return "\n\n".join(parts)


def run(upstream: str, options: WrkOptions, cpus: Cpus, workdir: Path) -> list[Result]:
    """Start the contenders, check their answers once they are up, measure them."""
    script = workdir / "graphql.lua"
    script.write_text(WRK_LUA)
    found = contenders(upstream, workdir)
    checked: list[bool] = []

    def before_run(result: Result) -> None:
        if not checked:  # every contender is up by the first measured run
            verify(found)
            checked.append(True)

    return measure(found, replace(options, script=str(script)), cpus, workdir,
                   before_run=before_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    WrkOptions.add_arguments(parser)
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the {SECTION} table in benchmarks/README.md")
    args = parser.parse_args(argv)
    try:
        options = WrkOptions.from_args(args)
        with terminate_on_sigterm():
            ensure_tools()
            cpus = Cpus.pick()
            before = load()
            with workspace("pygate-bench-graphql-") as workdir:
                with nginx_json_upstream(workdir, cpus.load, LOCATIONS) as upstream:
                    results = run(upstream, options, cpus, workdir)
                notes = (machine_notes(options, cpus) + f" Load average {before} at the start, "
                         f"{load()} at the end.")
    except BenchError as exc:
        log_stderr(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log_stderr("interrupted; servers stopped")
        return 130
    return report(render(results, notes), SECTION, args.write_readme, results)


if __name__ == "__main__":
    sys.exit(main())
