// The official GraphQL-over-HTTP server audit (graphql-http's auditServer) against one URL,
// as tests/test_graphql_http_functional.py runs it:
//
//   node audit.mjs http://127.0.0.1:8080/graphql
//
// Prints a JSON array with one object per audit: its id, name, status ("ok", "error" for a
// failed MUST, "warn" for a failed SHOULD, "notice" for a failed MAY) and, when it did not
// pass, the reason and the response's status and body.
import { auditServer } from "graphql-http";

const url = process.argv[2];
if (!url) {
  console.error("usage: node audit.mjs URL");
  process.exit(2);
}

const results = await auditServer({ url });
const out = [];
for (const result of results) {
  const entry = { id: result.id, name: result.name, status: result.status };
  if (result.status !== "ok") {
    entry.reason = result.reason;
    entry.response = { status: result.response.status, body: await result.response.text() };
  }
  out.push(entry);
}
console.log(JSON.stringify(out));
