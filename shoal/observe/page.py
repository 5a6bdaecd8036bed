"""The service graph's page: one HTML document, its script drawing the graph in SVG from /api/graph.

No library and nothing fetched from elsewhere: the page works on a machine with no network. Nodes
are laid out in columns by how far they are from a workload that only sends (callers left, callees
right); each edge is labelled with its rate, error rate and p99, and badges say mTLS and waypoint.
A click on a node (or `?select=<namespace>/<workload>` in the address) opens its details: identity,
policies, recent connections. Elements carry data- attributes, so a browser test can read what was
drawn.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shoal service graph</title>
<style>
 body{font:14px system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f8fa;display:flex;height:100vh}
 #main{flex:1;display:flex;flex-direction:column} header{padding:10px 16px;background:#13315c;color:#fff}
 header b{font-size:16px} #status{margin-left:12px;opacity:.85}
 svg{flex:1;width:100%} .node circle{fill:#fff;stroke:#13315c;stroke-width:2;cursor:pointer}
 .node.selected circle{fill:#dbe9ff} .node text{font-size:13px;text-anchor:middle}
 .node .ver{font-size:11px;fill:#5b6b7c} .edge path{fill:none;stroke:#7a8a9a;stroke-width:2}
 .edge.errors path{stroke:#c0392b} .edge text{font-size:12px;fill:#1d2733;paint-order:stroke;stroke:#f6f8fa;
  stroke-width:5px;stroke-linejoin:round}
 .badge{font-size:10px;font-weight:600} .badge.mtls{fill:#1e7d32} .badge.plain{fill:#c0392b} .badge.wp{fill:#6a3fb5}
 aside{width:360px;background:#fff;border-left:1px solid #d0d7de;padding:12px 16px;overflow:auto}
 aside h2{font-size:16px;margin:4px 0 8px} aside h3{font-size:13px;margin:14px 0 4px;color:#5b6b7c}
 aside li{margin:2px 0;word-break:break-all} .muted{color:#5b6b7c}
</style></head>
<body><div id="main"><header><b>shoal</b> service graph <span id="status">loading…</span></header>
<svg id="graph" xmlns="http://www.w3.org/2000/svg"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5"
 markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#7a8a9a"/></marker></defs>
 <g id="edges"></g><g id="nodes"></g></svg></div>
<aside id="details"><h2>Details</h2><p class="muted">Click a workload.</p></aside>
<script>
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v, digits, unit) { return v === null || v === undefined ? "–" : v.toFixed(digits) + unit; }
function layout(graph) {
  const incoming = {}, depth = {};
  graph.nodes.forEach(n => { incoming[n.id] = []; });
  graph.edges.forEach(e => incoming[e.target].push(e.source));
  function d(id, seen) {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const ins = incoming[id].filter(s => s !== id);
    return depth[id] = ins.length ? 1 + Math.max(...ins.map(s => d(s, seen))) : 0;
  }
  graph.nodes.forEach(n => d(n.id, new Set()));
  const columns = {};
  graph.nodes.forEach(n => (columns[depth[n.id]] = columns[depth[n.id]] || []).push(n));
  const at = {};
  Object.entries(columns).forEach(([c, nodes]) => nodes.forEach((n, i) => {
    at[n.id] = {x: 110 + Number(c) * 480, y: 90 + i * 170};
  }));
  return at;
}
function draw(graph) {
  const at = layout(graph), edges = document.getElementById("edges"), nodes = document.getElementById("nodes");
  edges.replaceChildren(); nodes.replaceChildren();
  for (const e of graph.edges) {
    const a = at[e.source], b = at[e.target], r = 34;
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const x1 = a.x + dx / len * r, y1 = a.y + dy / len * r, x2 = b.x - dx / len * r, y2 = b.y - dy / len * r;
    const g = el("g", {class: "edge" + (e.error_rate ? " errors" : ""), "data-source": e.source, "data-target": e.target,
                       "data-protocol": e.protocol, "data-mtls": e.mtls, "data-waypoint": e.waypoint || "",
                       "data-rps": e.rps, "data-error-rate": e.error_rate === null ? "" : e.error_rate,
                       "data-p99-ms": e.p99_ms === null ? "" : e.p99_ms});
    g.appendChild(el("path", {d: `M${x1},${y1}L${x2},${y2}`, "marker-end": "url(#arrow)"}));
    const mx = x1 + (x2 - x1) * 0.55, my = y1 + (y2 - y1) * 0.55 - 22;
    const text = e.protocol === "http"
      ? `${fmt(e.rps, 2, " rps")} · ${fmt(e.error_rate === null ? null : e.error_rate * 100, 1, "% err")} · p99 ${fmt(e.p99_ms, 1, " ms")}`
      : `${fmt(e.rps, 2, " conn/s")} · ` + (e.tcp_bytes_per_second < 1024 ? fmt(e.tcp_bytes_per_second, 0, " B/s")
                                              : fmt(e.tcp_bytes_per_second / 1024, 1, " KiB/s"));
    g.appendChild(el("text", {x: mx, y: my, "text-anchor": "middle", class: "figures"}, text));
    const badges = el("text", {x: mx, y: my + 16, "text-anchor": "middle"});
    const tls = el("tspan", {class: "badge " + (e.mtls ? "mtls" : "plain")}, e.mtls ? "mTLS" : "plaintext");
    badges.appendChild(tls);
    if (e.waypoint) badges.appendChild(el("tspan", {class: "badge wp", dx: 8}, "via waypoint " + e.waypoint));
    g.appendChild(badges);
    edges.appendChild(g);
  }
  for (const n of graph.nodes) {
    const p = at[n.id];
    const g = el("g", {class: "node", "data-id": n.id, transform: `translate(${p.x},${p.y})`});
    g.appendChild(el("circle", {r: 32}));
    g.appendChild(el("text", {y: 50}, n.workload));
    g.appendChild(el("text", {y: 65, class: "ver"}, n.namespace + (n.versions.length ? " · " + n.versions.join(", ") : "")));
    g.addEventListener("click", () => select(n.id));
    nodes.appendChild(g);
  }
  const svg = document.getElementById("graph");
  const xs = Object.values(at).map(p => p.x), ys = Object.values(at).map(p => p.y);
  if (xs.length) svg.setAttribute("viewBox", `0 0 ${Math.max(...xs) + 160} ${Math.max(...ys) + 110}`);
  document.getElementById("status").textContent =
    `${graph.nodes.length} workloads, ${graph.edges.length} edges · from ${graph.origin}, last ${graph.window_seconds.toFixed(0)} s`;
}
async function select(id) {
  document.querySelectorAll(".node").forEach(n => n.classList.toggle("selected", n.dataset.id === id));
  const aside = document.getElementById("details");
  const d = await (await fetch("api/node?id=" + encodeURIComponent(id))).json();
  const li = items => items.length ? items.map(i => `<li>${i}</li>`).join("") : '<li class="muted">none</li>';
  const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  aside.innerHTML = `<h2 data-id="${esc(d.id)}">${esc(d.workload)} <span class="muted">${esc(d.namespace)}</span></h2>
    <h3>Identity</h3><ul class="identities">${li(d.identities.map(esc))}</ul>
    <h3>Pods</h3><ul>${li(d.pods.map(esc))}</ul>
    <h3>Policies</h3><ul class="policies">${li(d.policies.map(p => `${esc(p.kind)} ${esc(p.name)}: ${esc(p.action)} (${esc(p.applies)})`))}</ul>
    <h3>Recent connections</h3><ul class="connections">${li(d.recent_connections.map(c =>
      `${esc((c.timestamp || "").slice(11, 19))} ${esc(c.src_workload || "?")} → ${esc(c.dst_workload || c.dst_service || "?")}` +
      ` ${c.mtls ? "mTLS" : "plaintext"} ${c.bytes_received}/${c.bytes_sent} B ${esc(c.response_flags)}`))}</ul>`;
}
async function refresh() {
  try {
    const answer = await fetch("api/graph");
    const graph = await answer.json();
    if (!answer.ok) throw new Error(graph.error);
    draw(graph);
    const wanted = new URLSearchParams(location.search).get("select");
    if (wanted && !document.querySelector(".node.selected")) await select(wanted);
  } catch (e) {
    document.getElementById("status").textContent = "no figures: " + e.message;
  }
}
refresh();
setInterval(refresh, 5000);
</script></body></html>
"""
