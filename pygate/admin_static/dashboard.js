// pygate dashboard: routes, upstream targets, and live per-route charts.
//
// The page holds no data: this script asks the admin listener's JSON API
// (GET /routes, /upstreams, /stats) with the token as a Bearer header. The
// token comes from the address's fragment (/#token=TOKEN: a fragment is never
// sent to the server, so it is never logged), which is then taken out of the
// address bar and kept in this tab's sessionStorage; without one, a 401 shows a
// small form. Rates, error shares and latency quantiles are computed here from
// the difference between two /stats polls. Hand-written SVG charts, no library.
"use strict";

(function () {
  const POLL_MS = 1000;            // /stats every second
  const UPSTREAMS_EVERY = 2;       // /upstreams every 2 polls
  const ROUTES_EVERY = 10;         // /routes every 10 polls (it changes on reload only)
  const HISTORY = 60;              // points kept per chart (a minute)
  const TOKEN_KEY = "pygate-admin-token";
  // pygate's /stats latency buckets (upper bounds, ms), for a snapshot that does not
  // name its own; one more bucket after the last holds everything slower.
  const DEFAULT_BUCKETS_MS = [0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75,
    100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 30000, 60000];

  const state = {
    token: null,
    routes: [],                    // [{name, path, methods, kind, plugins}]
    previous: null,                // the last normalized /stats snapshot
    series: new Map(),             // route -> {rate: [], p50: [], p99: [], errors: []}
    rows: new Map(),               // route -> {row, charts}
    tick: 0,
    timer: null,
    waitingForToken: false,
  };

  // -- the token -------------------------------------------------------------------

  function takeToken() {
    const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const given = fragment.get("token");
    if (given) {
      try { window.sessionStorage.setItem(TOKEN_KEY, given); } catch (e) { /* private mode */ }
      fragment.delete("token");
      const rest = fragment.toString();
      window.history.replaceState(null, "", window.location.pathname + window.location.search +
        (rest ? "#" + rest : ""));
      return given;
    }
    try { return window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function askForToken(why) {
    state.waitingForToken = true;
    stop();
    const form = document.getElementById("login");
    document.getElementById("login-why").textContent = why;
    form.hidden = false;
    document.getElementById("token").focus();
    setStatus("waiting for the admin token");
  }

  function onLogin(event) {
    event.preventDefault();
    const value = document.getElementById("token").value.trim();
    if (!value) return;
    state.token = value;
    try { window.sessionStorage.setItem(TOKEN_KEY, value); } catch (e) { /* private mode */ }
    document.getElementById("login").hidden = true;
    state.waitingForToken = false;
    start();
  }

  // -- the API ---------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = { "Accept": "application/json" };
    if (state.token) headers["Authorization"] = "Bearer " + state.token;
    const response = await fetch(path, { headers: headers, cache: "no-store",
                                         credentials: "omit" });
    if (response.status === 401 || response.status === 403) throw new Unauthorized(path);
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  // -- normalizing what the API answers ----------------------------------------------

  function listOf(value, key) {
    if (Array.isArray(value)) return value;
    if (value && Array.isArray(value[key])) return value[key];
    return [];
  }

  function names(value) {
    if (!value) return [];
    if (Array.isArray(value)) return value.map(function (p) {
      return typeof p === "string" ? p : (p && p.name) || String(p);
    });
    if (typeof value === "object") return Object.keys(value).filter(function (k) {
      return value[k] !== false;
    });
    return [String(value)];
  }

  function normalizeRoutes(raw) {
    return listOf(raw, "routes").map(function (r) {
      return {
        name: String(r.name),
        path: r.path || "",
        methods: r.methods && r.methods.length ? r.methods.join(", ") : "any",
        kind: r.kind || "",
        plugins: names(r.plugins).join(", ") || "none",
      };
    });
  }

  function normalizeUpstreams(raw) {
    let list = listOf(raw, "upstreams");
    if (!list.length && raw && typeof raw === "object" && !Array.isArray(raw)) {
      const source = raw.upstreams && typeof raw.upstreams === "object" ? raw.upstreams : raw;
      list = Object.keys(source).map(function (name) {
        const value = source[name];
        return Array.isArray(value) ? { name: name, targets: value }
                                    : Object.assign({ name: name }, value);
      });
    }
    return list.map(function (u) {
      return {
        name: String(u.name),
        targets: listOf(u.targets, "targets").map(function (t) {
          const breaker = t.breaker && typeof t.breaker === "object" ? t.breaker.state
                                                                     : t.breaker;
          const active = t.active !== undefined ? t.active
            : (t.in_flight !== undefined ? t.in_flight : t.inflight);
          return {
            label: String(t.label || t.target || t.url || "?"),
            healthy: t.healthy !== false,
            breaker: breaker || "closed",
            active: typeof active === "number" ? active : null,
          };
        }),
      };
    });
  }

  function normalizeStats(raw) {
    const time = typeof raw.time === "number" ? raw.time : Date.now() / 1000;
    const top = raw.buckets_ms || raw.buckets || null;
    const routes = {};
    const source = raw.routes || {};
    Object.keys(source).forEach(function (name) {
      const r = source[name] || {};
      let buckets = top || DEFAULT_BUCKETS_MS;
      let counts = [];
      if (r.latency_ms && Array.isArray(r.latency_ms.counts)) {
        counts = r.latency_ms.counts;
        buckets = r.latency_ms.buckets || buckets;
      } else if (Array.isArray(r.latency)) {
        counts = r.latency;
      } else if (r.latency && Array.isArray(r.latency.counts)) {
        counts = r.latency.counts;
        buckets = r.latency.buckets || buckets;
      }
      routes[name] = { requests: r.requests || 0, errors: r.errors || 0,
                       buckets: buckets, counts: counts };
    });
    return { time: time, routes: routes };
  }

  // -- live figures from two snapshots -----------------------------------------------

  function quantile(buckets, counts, q) {
    let total = 0;
    counts.forEach(function (c) { total += c; });
    if (!total) return null;
    const rank = q * total;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      const count = counts[i];
      if (count && seen + count >= rank) {
        const low = i ? buckets[Math.min(i, buckets.length) - 1] : 0;
        const high = i < buckets.length ? buckets[i] : low;  // the overflow bucket
        return low + (high - low) * (rank - seen) / count;
      }
      seen += count;
    }
    return buckets[buckets.length - 1];
  }

  function differences(now, before) {
    const out = {};
    const seconds = now.time - before.time;
    if (!(seconds > 0)) return out;
    Object.keys(now.routes).forEach(function (name) {
      const a = now.routes[name];
      const b = before.routes[name] || { requests: 0, errors: 0, counts: [] };
      const requests = a.requests - b.requests;
      if (requests < 0) return;  // counters restarted (a worker or the admin): skip a beat
      const errors = Math.max(0, a.errors - b.errors);
      const counts = a.counts.map(function (c, i) { return Math.max(0, c - (b.counts[i] || 0)); });
      out[name] = {
        rate: requests / seconds,
        errors: requests ? 100 * errors / requests : 0,
        p50: requests ? quantile(a.buckets, counts, 0.5) : null,
        p99: requests ? quantile(a.buckets, counts, 0.99) : null,
      };
    });
    return out;
  }

  function seriesOf(name) {
    let series = state.series.get(name);
    if (!series) {
      series = { rate: [], p50: [], p99: [], errors: [] };
      state.series.set(name, series);
    }
    return series;
  }

  function push(list, value) {
    list.push(value);
    if (list.length > HISTORY) list.shift();
  }

  // -- drawing -----------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  const W = 160;
  const H = 36;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function makeChart(kind, route) {
    const box = element("div", "chart");
    box.dataset.chart = kind;
    box.dataset.route = route;
    const value = element("span", "value", "–");
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", kind + " of " + route);
    box.appendChild(value);
    box.appendChild(svg);
    return { box: box, value: value, svg: svg };
  }

  // ``lines``: [{values, className}], drawn on one scale; null values leave gaps.
  function draw(chart, lines, text) {
    const svg = chart.svg;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    let top = 0;
    lines.forEach(function (line) {
      line.values.forEach(function (v) { if (v !== null && v > top) top = v; });
    });
    top = top > 0 ? top * 1.15 : 1;
    const step = W / (HISTORY - 1);
    let drawn = 0;
    lines.forEach(function (line) {
      const offset = HISTORY - line.values.length;
      let points = [];
      const flush = function () {
        if (points.length > 1) {
          const poly = document.createElementNS(SVG, "polyline");
          poly.setAttribute("points", points.join(" "));
          poly.setAttribute("class", line.className);
          svg.appendChild(poly);
        } else if (points.length === 1) {
          const xy = points[0].split(",");
          const dot = document.createElementNS(SVG, "circle");
          dot.setAttribute("cx", xy[0]);
          dot.setAttribute("cy", xy[1]);
          dot.setAttribute("r", "1.5");
          dot.setAttribute("class", line.className + " dot");
          svg.appendChild(dot);
        }
        drawn += points.length;
        points = [];
      };
      line.values.forEach(function (v, i) {
        if (v === null) { flush(); return; }
        const x = (offset + i) * step;
        const y = H - 1 - (v / top) * (H - 2);
        points.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      flush();
    });
    chart.box.dataset.points = String(drawn);
    chart.value.textContent = text;
  }

  function formatRate(v) { return v === null || v === undefined ? "–" : (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + "/s"; }
  function formatMs(v) { return v === null || v === undefined ? "–" : (v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2)) + " ms"; }
  function formatShare(v) { return v === null || v === undefined ? "–" : v.toFixed(v && v < 1 ? 2 : 1) + " %"; }

  function last(list) {
    for (let i = list.length - 1; i >= 0; i--) if (list[i] !== null) return list[i];
    return null;
  }

  function renderCharts(name) {
    const row = state.rows.get(name);
    if (!row) return;
    const s = seriesOf(name);
    draw(row.charts.rate, [{ values: s.rate, className: "line rate" }], formatRate(last(s.rate)));
    draw(row.charts.latency, [{ values: s.p99, className: "line p99" },
                              { values: s.p50, className: "line p50" }],
         formatMs(last(s.p50)) + " / " + formatMs(last(s.p99)));
    draw(row.charts.errors, [{ values: s.errors, className: "line errors" }],
         formatShare(last(s.errors)));
  }

  function renderRoutes() {
    const body = document.querySelector("#routes tbody");
    const known = new Set(state.routes.map(function (r) { return r.name; }));
    const extra = Object.keys(state.previous ? state.previous.routes : {})
      .filter(function (n) { return !known.has(n); })
      .map(function (n) {
        return { name: n, path: "", methods: "", kind: "(no longer configured)", plugins: "" };
      });
    while (body.firstChild) body.removeChild(body.firstChild);
    state.rows.clear();
    state.routes.concat(extra).forEach(function (r) {
      const tr = element("tr");
      tr.dataset.route = r.name;
      const name = element("th", "name", r.name);
      name.scope = "row";
      tr.appendChild(name);
      tr.appendChild(element("td", "path", r.path));
      tr.appendChild(element("td", "methods", r.methods));
      tr.appendChild(element("td", "kind", r.kind));
      tr.appendChild(element("td", "plugins", r.plugins));
      const charts = { rate: makeChart("rate", r.name), latency: makeChart("latency", r.name),
                       errors: makeChart("errors", r.name) };
      ["rate", "latency", "errors"].forEach(function (k) {
        const td = element("td", "chart-cell");
        td.appendChild(charts[k].box);
        tr.appendChild(td);
      });
      body.appendChild(tr);
      state.rows.set(r.name, { row: tr, charts: charts });
      renderCharts(r.name);
    });
  }

  function renderUpstreams(upstreams) {
    const box = document.getElementById("upstreams");
    while (box.firstChild) box.removeChild(box.firstChild);
    if (!upstreams.length) {
      box.appendChild(element("p", "empty", "No upstreams."));
      return;
    }
    upstreams.forEach(function (u) {
      const card = element("article", "upstream");
      card.dataset.upstream = u.name;
      card.appendChild(element("h3", null, u.name));
      const table = element("table", "targets");
      const head = element("tr");
      ["target", "health", "breaker", "in flight"].forEach(function (h) {
        const th = element("th", null, h);
        th.scope = "col";
        head.appendChild(th);
      });
      const thead = element("thead");
      thead.appendChild(head);
      table.appendChild(thead);
      const tbody = element("tbody");
      u.targets.forEach(function (t) {
        const tr = element("tr");
        tr.dataset.target = t.label;
        tr.appendChild(element("td", "target", t.label));
        const health = element("td");
        health.appendChild(element("span", "badge " + (t.healthy ? "ok" : "bad"),
                                   t.healthy ? "healthy" : "unhealthy"));
        tr.appendChild(health);
        const breaker = element("td");
        const kind = t.breaker === "closed" ? "ok" : (t.breaker === "open" ? "bad" : "warn");
        breaker.appendChild(element("span", "badge " + kind, t.breaker));
        tr.appendChild(breaker);
        tr.appendChild(element("td", "active", t.active === null ? "–" : String(t.active)));
        tbody.appendChild(tr);
      });
      table.appendChild(tbody);
      card.appendChild(table);
      box.appendChild(card);
    });
  }

  function setStatus(text) {
    document.getElementById("status").textContent = text;
  }

  // -- the poll loop ------------------------------------------------------------------

  async function refreshRoutes() {
    state.routes = normalizeRoutes(await api("routes"));
    renderRoutes();
  }

  async function refreshUpstreams() {
    renderUpstreams(normalizeUpstreams(await api("upstreams")));
  }

  async function refreshStats() {
    const now = normalizeStats(await api("stats"));
    if (state.previous) {
      const live = differences(now, state.previous);
      const seen = new Set(Object.keys(now.routes).concat(state.routes.map(function (r) {
        return r.name;
      })));
      seen.forEach(function (name) {
        const figures = live[name];
        const s = seriesOf(name);
        push(s.rate, figures ? figures.rate : 0);
        push(s.errors, figures ? figures.errors : 0);
        push(s.p50, figures ? figures.p50 : null);
        push(s.p99, figures ? figures.p99 : null);
      });
    }
    const added = Object.keys(now.routes).some(function (n) { return !state.rows.has(n); });
    state.previous = now;
    if (added) renderRoutes();
    else state.rows.forEach(function (_, name) { renderCharts(name); });
  }

  async function poll() {
    state.timer = null;
    const tick = state.tick++;
    try {
      if (tick % ROUTES_EVERY === 0) await refreshRoutes();
      if (tick % UPSTREAMS_EVERY === 0) await refreshUpstreams();
      await refreshStats();
      document.getElementById("board").hidden = false;
      setStatus("live · updated " + new Date().toLocaleTimeString());
    } catch (error) {
      if (error instanceof Unauthorized) {
        askForToken(state.token ? "The admin listener refused this token; enter it again."
                                : "This admin listener needs its token.");
        return;
      }
      setStatus("cannot reach the admin API (" + (error && error.message) + "); retrying");
      state.tick = 0;  // ask for everything again once it answers
    }
    if (!state.waitingForToken) state.timer = window.setTimeout(poll, POLL_MS);
  }

  function start() {
    stop();
    state.tick = 0;
    state.previous = null;
    poll();
  }

  function stop() {
    if (state.timer !== null) window.clearTimeout(state.timer);
    state.timer = null;
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("login").addEventListener("submit", onLogin);
    state.token = takeToken();
    start();
  });
})();
