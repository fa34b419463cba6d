// remapd status page: the local cluster and each peering drawn from the API, refreshed
// every 2 s. Everything the API returns is put into the page as text (never as HTML):
// peering names and CIDRs come from other organisations.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let token = sessionStorage.getItem("remapd-token") || "";

// A token in the fragment (never sent to the server, never in its logs) is taken once
// and removed from the address bar.
(function takeToken() {
  const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("remapd-token", token);
    history.replaceState(null, "", location.pathname);
  }
})();

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) {
    document.getElementById("token-form").hidden = false;
    throw new Error("the API needs a token for reads: type it above");
  }
  if ((r.status === 404 || r.status === 409) && path === "/v1/cluster") return null;
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(path + ": " + r.status + " " + detail);
  }
  return r.json();
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const list = (xs) => (xs && xs.length ? xs.join(", ") : "—");

// Where the rewrites happen, per strategy (this gateway's point of view).
function rewritesAt(strategy) {
  switch (strategy) {
    case "split": return ["dst on egress, src on ingress (the peer's addresses)", "the same, for ours"];
    case "both-on-local": return ["every rewrite, both directions", "none: routes only"];
    case "both-on-remote": return ["none: routes only", "every rewrite, both directions"];
    default: return ["none", "none"];
  }
}

function box(g, x, title, lines, fill) {
  g.append(svg("rect", { x, y: 10, width: 300, height: 40 + 18 * lines.length, rx: 6, fill, stroke: "#888" }));
  g.append(svg("text", { x: x + 10, y: 30, class: "title" }, title));
  lines.forEach((l, i) => g.append(svg("text", { x: x + 10, y: 52 + 18 * i }, l)));
}

function drawPeering(cluster, p) {
  const strategy = p.decision ? p.decision.strategy : "none";
  const ourView = p.decision ? p.decision.mappings.map((m) => m.real + " → " + m.remapped) : [];
  const theirView = (p.spec.remote.view_of_local || []).map((m) => m.real + " → " + m.remapped);
  const [here, there] = rewritesAt(strategy);
  const g = svg("svg", { viewBox: "0 0 900 170", role: "img",
    "aria-label": "peering " + p.name + " drawn as two clusters and a tunnel" });
  box(g, 0, "this cluster: " + (cluster ? cluster.name : "?"), [
    "real: " + list(cluster ? cluster.pod_cidrs.concat(cluster.service_cidrs || []) : []),
    "we see them at: " + list(ourView),
    "rewrites here: " + here,
  ], "#e8f0fe");
  box(g, 600, "remote: " + p.spec.remote.name, [
    "real: " + list(p.spec.remote.pod_cidrs.concat(p.spec.remote.service_cidrs || [])),
    "they see us at: " + list(theirView),
    "rewrites there: " + there,
  ], "#fef7e0");
  g.append(svg("line", { x1: 300, y1: 60, x2: 600, y2: 60, stroke: "#555", "stroke-width": 3 }));
  g.append(svg("text", { x: 450, y: 50, "text-anchor": "middle" }, p.interface + " · WireGuard"));
  g.append(svg("text", { x: 450, y: 80, "text-anchor": "middle" }, "strategy: " + strategy));
  const tunnel = p.tunnel;
  const hs = tunnel && tunnel.last_handshake_unix
    ? "handshake " + new Date(tunnel.last_handshake_unix * 1000).toLocaleTimeString() : "no handshake";
  g.append(svg("text", { x: 450, y: 100, "text-anchor": "middle" }, hs));
  return g;
}

function render(cluster, peerings, status) {
  document.getElementById("cluster-name").textContent = cluster ? cluster.name : "(no cluster configured)";
  document.getElementById("cluster-cidrs").textContent = cluster
    ? "pods " + list(cluster.pod_cidrs) + " · services " + list(cluster.service_cidrs) : "";
  const ready = document.getElementById("ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.className = status.ready ? "good" : "bad";
  const main = document.getElementById("peerings");
  main.replaceChildren();
  if (!peerings.length) main.append(el("p", {}, "No peerings."));
  const errors = [];
  for (const p of peerings) {
    const packets = p.applied.reduce((n, r) => n + r.packets, 0);
    const rx = p.tunnel ? p.tunnel.rx_bytes : 0;
    const tx = p.tunnel ? p.tunnel.tx_bytes : 0;
    const section = el("section", { class: "peering", "data-peering": p.name },
      el("h2", {}, "peering " + p.name),
      drawPeering(cluster, p),
      el("p", { class: "counters" },
        el("span", {}, "translated packets: ", el("b", { id: "packets-" + p.name, class: "mono" }, String(packets))),
        el("span", {}, "tunnel rx: ", el("b", { class: "mono" }, String(rx)), " B"),
        el("span", {}, "tunnel tx: ", el("b", { class: "mono" }, String(tx)), " B")),
      el("details", {}, el("summary", {}, "rules (" + p.applied.length + ")"),
        el("ul", {}, ...p.applied.map((r) => el("li", { class: "mono" }, r.rule + ": " + r.packets + " packets"))))
    );
    main.append(section);
    for (const [what, e] of [["", p.last_error], ["tunnel: ", p.tunnel_error], ["key: ", p.key_error]]) {
      if (e) errors.push(p.name + ": " + what + e);
    }
  }
  const report = status.last_reconcile;
  if (report && report.errors) errors.push(...report.errors);
  for (const [reason, n] of Object.entries(status.dropped_packets || {})) {
    errors.push("dataplane dropped " + n + " packets: " + reason);
  }
  const ul = document.getElementById("errors");
  ul.replaceChildren(...(errors.length ? errors : ["none"]).map((e) => el("li", {}, e)));
  document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
  document.body.dataset.loaded = "true";
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [cluster, peerings, status] = await Promise.all([
      api("/v1/cluster"), api("/v1/peerings"), api("/v1/status")]);
    render(cluster, peerings, status);
    error.textContent = "";
  } catch (e) {
    error.textContent = String(e.message || e);
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("remapd-token", token);
  document.getElementById("token-form").hidden = true;
  refresh();
});

// The live trace: one streamed GET /v1/trace (NDJSON, read as it arrives, with the
// token in a header), stopped with an AbortController.
const MAX_ROWS = 200;
let traceAbort = null;

function endpoint(a) {
  if (!a) return "—";
  const port = (p) => (p === undefined ? "" : ":" + p);
  return a.src + port(a.src_port) + " → " + a.dst + port(a.dst_port);
}

function traceRow(e) {
  const rules = e.rules.map((r) => r.field + " " + (r.from || "?") + " → " + (r.to || "?")).join("; ");
  const proto = e.icmp ? e.protocol + " " + e.icmp.type + "/" + e.icmp.code : e.protocol;
  const verdict = e.verdict === "dropped" ? "dropped: " + e.reason : "translated";
  const row = el("tr", { class: e.verdict === "dropped" ? "bad" : "" },
    ...[e.time.slice(11, 23), e.peering || e.interface, e.direction, proto,
      endpoint(e.before), endpoint(e.after), verdict, rules || "—"]
      .map((t) => el("td", { class: "mono" }, t)));
  const rows = document.getElementById("trace-rows");
  rows.prepend(row);
  while (rows.children.length > MAX_ROWS) rows.lastChild.remove();
}

function traceState(running, text) {
  document.getElementById("trace-start").disabled = running;
  document.getElementById("trace-stop").disabled = !running;
  document.getElementById("trace-status").textContent = text;
}

async function startTrace() {
  const query = new URLSearchParams({ duration: "10m", rate: "100" });
  for (const f of ["peering", "prefix", "protocol", "verdict"]) {
    const v = document.getElementById("trace-" + f).value.trim();
    if (v) query.set(f, v);
  }
  const abort = new AbortController();
  traceAbort = abort;
  traceState(true, "starting");
  let lost = 0;
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch("/v1/trace?" + query, { headers, signal: abort.signal, cache: "no-store" });
    if (!r.ok) {
      // A trace needs the token even where other reads do not.
      if (r.status === 401) document.getElementById("token-form").hidden = false;
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (_) { /* not JSON */ }
      traceState(false, "refused: " + r.status + " " + detail);
      return;
    }
    traceState(true, "running");
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        const item = JSON.parse(line);
        if (item.type === "event") traceRow(item);
        else if (item.type === "lost") {
          lost += item.events;
          traceState(true, "running · " + lost + " events not shown (" + item.cause + ")");
        } else if (item.type === "end") {
          traceState(false, "ended (" + item.reason + "): " + item.events + " events");
          return;
        }
      }
    }
    traceState(false, "stopped");
  } catch (e) {
    traceState(false, abort.signal.aborted ? "stopped" : "failed: " + (e.message || e));
  } finally {
    if (traceAbort === abort) traceAbort = null;
  }
}

document.getElementById("trace-start").addEventListener("click", startTrace);
document.getElementById("trace-stop").addEventListener("click", () => {
  if (traceAbort) traceAbort.abort();
});

refresh();
setInterval(refresh, 2000);
