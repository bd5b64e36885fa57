// The Node peer of benchmarks/bench_graphql.py: the GraphQL gateway a Node team writes by
// hand over its REST services, the way the graphql-js and DataLoader documentation show it.
//
//   node gateway.js --listen 127.0.0.1:9000 --upstream http://127.0.0.1:8000 --schema FILE
//
// The schema is the SDL pygate's route serves (pygate/demo/schema.graphql), built with
// graphql-js's buildSchema; the resolvers make the calls pygate's resolvers make:
//
//   Query.me      GET /users/:id              (:id from the X-User-Id request header)
//   User.orders   GET /orders?userId=1,2,...  (a DataLoader per request: one call for all users)
//   Item.product  GET /products?id=1,2,...    (a DataLoader per request, matched by id)
//
// served by graphql-http's Node http handler (GraphQL over HTTP: GET and POST, media types by
// Accept), the calls through one undici Agent (keep-alive pool). Other fields are read from
// their parent's JSON by graphql-js's default resolver. No request IDs, X-Forwarded-*,
// per-call deadlines, call limits or plugins.
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const DataLoader = require("dataloader");
const { buildSchema } = require("graphql");
const { createHandler } = require("graphql-http/lib/use/http");
const { Agent, request } = require("undici");

function option(name) {
  const at = process.argv.indexOf(`--${name}`);
  if (at < 0 || at + 1 >= process.argv.length) {
    console.error("usage: node gateway.js --listen HOST:PORT --upstream URL --schema FILE "
                  + `(missing --${name})`);
    process.exit(2);
  }
  return process.argv[at + 1];
}

const listen = option("listen");
const upstream = option("upstream").replace(/\/+$/, "");
const schema = buildSchema(fs.readFileSync(option("schema"), "utf8"));
const agent = new Agent({ connections: 256, keepAliveTimeout: 60_000, headersTimeout: 3_000, bodyTimeout: 3_000 });

async function getJson(path) {
  const { statusCode, body } = await request(upstream + path, {
    dispatcher: agent,
    headers: { accept: "application/json" },
  });
  if (statusCode < 200 || statusCode >= 300) {
    await body.dump();
    throw new Error(`upstream answered ${statusCode}`);
  }
  return body.json();
}

// One call for a batch of keys; each key gets the items whose `field` equals it.
function loader(path, param, field, many) {
  return new DataLoader(async (keys) => {
    const items = await getJson(`${path}?${param}=${keys.map(encodeURIComponent).join(",")}`);
    const byKey = new Map();
    for (const item of items) {
      const key = String(item[field]);
      if (!byKey.has(key)) byKey.set(key, []);
      byKey.get(key).push(item);
    }
    return keys.map((key) => {
      const found = byKey.get(String(key));
      return many ? (found || []) : (found ? found[0] : null);
    });
  });
}

schema.getQueryType().getFields().me.resolve = (_, __, ctx) =>
  getJson(`/users/${encodeURIComponent(ctx.userId)}`);
schema.getType("User").getFields().orders.resolve = (user, _, ctx) => ctx.orders.load(user.id);
schema.getType("Item").getFields().product.resolve = (item, _, ctx) =>
  ctx.products.load(item.productId);

const handler = createHandler({
  schema,
  context: (req) => ({
    userId: req.raw.headers["x-user-id"] || "",
    orders: loader("/orders", "userId", "userId", true),
    products: loader("/products", "id", "id", false),
  }),
});

const server = http.createServer((req, res) => {
  if (req.url === "/graphql" || req.url.startsWith("/graphql?")) {
    handler(req, res);
  } else {
    res.writeHead(404).end();
  }
});
server.keepAliveTimeout = 75_000;
const at = listen.lastIndexOf(":");
server.listen(Number(listen.slice(at + 1)), listen.slice(0, at) || "127.0.0.1");
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
