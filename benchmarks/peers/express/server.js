'use strict';
// The API gateway the Node tutorials write, as a benchmark peer of pygate:
// Express, jsonwebtoken (HS256 bearer tokens), express-rate-limit (its default
// in-memory fixed-window store, keyed by the token's subject), identity headers
// to the upstream (X-User-Id, X-User-Role, never the client's own copies) and
// http-proxy-middleware with a keep-alive agent. One process, no cluster.
//
//   JWT_SECRET=... node server.js --listen 127.0.0.1:9000 --upstream http://127.0.0.1:8000
//
// RATE_LIMIT (requests per minute per subject, default 1000000000) sets the limit.
// --checks off (or CHECKS=off) runs the same code as a plain proxy: no token, rate
// limit or identity headers, only the proxy middleware (JWT_SECRET is then unused).
// ACCESS_LOG=FILE appends one JSON line per request to FILE (time, method, path,
// status, duration, bytes out, client address and, with checks, the token subject),
// written through one fs.WriteStream when the response has finished.

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const express = require('express');
const jwt = require('jsonwebtoken');
const { rateLimit } = require('express-rate-limit');
const { createProxyMiddleware } = require('http-proxy-middleware');

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (fallback !== undefined) return fallback;
  console.error(`missing --${name}`);
  process.exit(2);
}

const listen = option('listen');
const upstream = option('upstream');
const checksOption = option('checks', process.env.CHECKS || 'on');
if (checksOption !== 'on' && checksOption !== 'off') {
  console.error(`--checks must be on or off, not ${checksOption}`);
  process.exit(2);
}
const checks = checksOption === 'on';
if (checks && !process.env.JWT_SECRET) {
  console.error('JWT_SECRET is not set');
  process.exit(2);
}
// The secret as a KeyObject, made once. Given as a plain string (as most tutorials
// do), jsonwebtoken 9 first tries it as a PEM public key on every call, and that
// failing parse costs about 0.5 ms per request under OpenSSL 3: 30 times the
// verification itself. This peer takes the fast path.
const secret = checks ? crypto.createSecretKey(Buffer.from(process.env.JWT_SECRET)) : null;
const limit = Number(process.env.RATE_LIMIT || 1000000000);
const separator = listen.lastIndexOf(':');
const host = listen.slice(0, separator) || '127.0.0.1';
const port = Number(listen.slice(separator + 1));

const app = express();
app.disable('x-powered-by');
app.disable('etag');

// 0. Access log: one JSON line per request, once the response has finished.
const accessLog = process.env.ACCESS_LOG
  ? fs.createWriteStream(process.env.ACCESS_LOG, { flags: 'a' })
  : null;
function logAccess(req, res, next) {
  const start = process.hrtime.bigint();
  res.on('finish', () => {
    const line = {
      time: new Date().toISOString(),
      method: req.method,
      path: req.originalUrl,
      status: res.statusCode,
      duration_ms: Number(process.hrtime.bigint() - start) / 1e6,
      bytes_out: Number(res.getHeader('content-length')) || null,
      client_ip: req.socket.remoteAddress,
      consumer: req.user ? String(req.user.sub) : null,
    };
    accessLog.write(JSON.stringify(line) + '\n');
  });
  next();
}

// 1. Authentication: a bearer token, verified on every request.
function authenticate(req, res, next) {
  const [scheme, token] = (req.headers.authorization || '').split(' ');
  if (scheme !== 'Bearer' || !token) {
    res.status(401).set('WWW-Authenticate', 'Bearer realm="express"')
      .json({ error: 'a bearer token is required' });
    return;
  }
  try {
    req.user = jwt.verify(token, secret, { algorithms: ['HS256'] });
  } catch (err) {
    res.status(401).set('WWW-Authenticate', 'Bearer error="invalid_token"')
      .json({ error: 'invalid token' });
    return;
  }
  next();
}

// 2. Rate limit: express-rate-limit's in-memory store, one window per minute.
const limiter = checks && rateLimit({
  windowMs: 60 * 1000,
  limit,
  standardHeaders: 'draft-6', // RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset
  legacyHeaders: false,
  keyGenerator: (req) => req.user.sub,
});

// 3. Identity headers: drop the client's copies, set them from the token.
function identityHeaders(req, res, next) {
  delete req.headers['x-user-id'];
  delete req.headers['x-user-role'];
  const roles = req.user.role === undefined ? [] : [].concat(req.user.role);
  req.headers['x-user-id'] = String(req.user.sub);
  if (roles.length) req.headers['x-user-role'] = roles.join(',');
  next();
}

// 4. The proxy, with a keep-alive agent to the upstream.
const proxy = createProxyMiddleware({
  target: upstream,
  changeOrigin: true,
  xfwd: true,
  agent: new http.Agent({ keepAlive: true, maxSockets: 256 }),
  on: {
    proxyRes: (proxyRes) => {
      delete proxyRes.headers.server;
    },
    error: (err, req, res) => {
      if (!res.headersSent) res.writeHead(502, { 'Content-Type': 'application/json' });
      res.end('{"error":"bad gateway"}');
    },
  },
});

if (accessLog) app.use(logAccess);
if (checks) app.use(authenticate, limiter, identityHeaders);
app.use(proxy);

const server = app.listen(port, host, () => {
  console.log(`express gateway on http://${host}:${port} -> ${upstream}` +
    (checks ? '' : ' (checks off)') + (accessLog ? `, access log ${process.env.ACCESS_LOG}` : ''));
});
server.keepAliveTimeout = 75 * 1000;

function stop() {
  server.close(() => (accessLog ? accessLog.end(() => process.exit(0)) : process.exit(0)));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
