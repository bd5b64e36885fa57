// The Express peer of benchmarks/bench_aggregate.py: the composition pygate's
// aggregate route does, written by hand the way the tutorials write it.
//
//   node aggregate.js --listen 127.0.0.1:9000 --upstream http://127.0.0.1:8000
//
// GET /agg/:id calls, at once, GET /users/:id and GET /orders/:id (required) and
// GET /products?orderId=:id (optional) on the upstream, through one undici Agent
// (keep-alive pool), and answers {"user": ..., "order": ..., "items": ...}. A
// failed required call gives 502; a failed optional call gives null and
// X-Pygate-Partial: items, as pygate does. No request IDs, X-Forwarded-*,
// per-call deadlines or plugins.
"use strict";

const express = require("express");
const { Agent, request } = require("undici");

function option(name) {
  const at = process.argv.indexOf(`--${name}`);
  if (at < 0 || at + 1 >= process.argv.length) {
    console.error(`usage: node aggregate.js --listen HOST:PORT --upstream URL (missing --${name})`);
    process.exit(2);
  }
  return process.argv[at + 1];
}

const listen = option("listen");
const upstream = option("upstream").replace(/\/+$/, "");
const agent = new Agent({ connections: 256, keepAliveTimeout: 60_000, headersTimeout: 3_000, bodyTimeout: 3_000 });

async function getJson(path) {
  const { statusCode, body } = await request(upstream + path, {
    dispatcher: agent,
    headers: { accept: "application/json" },
  });
  if (statusCode < 200 || statusCode >= 300) {
    await body.dump();
    throw new Error(`status ${statusCode}`);
  }
  return body.json();
}

const app = express();
app.set("etag", false);
app.set("x-powered-by", false);

app.get("/agg/:id", async (req, res) => {
  const id = encodeURIComponent(req.params.id);
  const [user, order, items] = await Promise.allSettled([
    getJson(`/users/${id}`),
    getJson(`/orders/${id}`),
    getJson(`/products?orderId=${id}`),
  ]);
  for (const [name, outcome] of [["user", user], ["order", order]]) {
    if (outcome.status === "rejected") {
      res.status(502).json({ title: "Bad Gateway", status: 502, detail: `call '${name}' failed` });
      return;
    }
  }
  if (items.status === "rejected") {
    res.set("X-Pygate-Partial", "items");
  }
  res.json({
    user: user.value,
    order: order.value,
    items: items.status === "fulfilled" ? items.value : null,
  });
});

const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), Number(listen.slice(listen.lastIndexOf(":") + 1))];
const server = app.listen(port, host || "127.0.0.1");
server.keepAliveTimeout = 75_000;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
