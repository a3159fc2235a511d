// citysense gateway status page: polls api/status once a second and redraws.
// Every value from the gateway is set with textContent (device ids and error texts come
// from the wire and are never parsed as HTML).
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};

function age(s) {
  if (s === null || s === undefined) return "never";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return Math.round(s / 86400) + " d";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function plain(v) {
  return v === null || v === undefined || v === "" ? "–" : String(v);
}

function short(path) {
  // a serial port by its last path element (/dev/serial/by-id/usb-... is long)
  return path ? String(path).split("/").pop() : "–";
}

function counts(obj) {
  const keys = Object.keys(obj || {});
  if (!keys.length) return "0";
  return keys.map((k) => k + " " + obj[k]).join(", ");
}

function set(field, text, cls) {
  const el = document.querySelector('[data-f="' + field + '"]');
  if (!el) return;
  el.textContent = text;
  el.className = cls || "";
}

function chart(perMinute) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 180 22");
  svg.setAttribute("width", "180");
  svg.setAttribute("height", "22");
  const base = document.createElementNS(SVG, "rect");
  base.setAttribute("class", "axis");
  base.setAttribute("x", "0");
  base.setAttribute("y", "21");
  base.setAttribute("width", "180");
  base.setAttribute("height", "1");
  svg.appendChild(base);
  const max = Math.max(1, ...perMinute);
  perMinute.forEach((n, i) => {
    if (!n) return;
    const r = document.createElementNS(SVG, "rect");
    const h = Math.max(1, Math.round((n / max) * 21));
    r.setAttribute("x", String(i * 3));
    r.setAttribute("y", String(21 - h));
    r.setAttribute("width", "2.4");
    r.setAttribute("height", String(h));
    svg.appendChild(r);
  });
  const title = document.createElementNS(SVG, "title");
  title.textContent = "records per minute, last 60 minutes (newest right)";
  svg.appendChild(title);
  return svg;
}

function cell(row, field, text, cls) {
  const td = document.createElement("td");
  td.dataset.f = field;
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function nodeRow(n) {
  const tr = document.createElement("tr");
  tr.dataset.node = n.id;
  tr.dataset.state = n.state;
  tr.className = "state-" + n.state;
  cell(tr, "id", n.id, "id");
  cell(tr, "state", n.state, "badge");
  cell(tr, "port", short(n.port)).title = plain(n.port);
  cell(tr, "last_seen", age(n.last_seen_age_s));
  cell(tr, "interval", n.interval_s ? n.interval_s.toFixed(1) + " s" : "–");
  cell(tr, "firmware", plain(n.firmware));
  cell(tr, "update", n.update || "–", /^(rolled-back|refused)/.test(n.update) ? "bad" : "");
  cell(tr, "boot", plain(n.boot));
  cell(tr, "reset", plain(n.reset));
  cell(tr, "seq", plain(n.seq), "num");
  const rec = cell(tr, "records_hour", String(n.records_hour), "count");
  rec.appendChild(chart(n.per_minute));
  cell(tr, "rejects", counts(n.rejects), Object.keys(n.rejects).length ? "warn" : "");
  cell(tr, "link_errors", plain(n.link_errors), n.link_errors ? "warn num" : "num");
  cell(tr, "dropped", plain(n.dropped), n.dropped ? "bad num" : "num");
  cell(tr, "battery", n.battery_v === null ? "–" : n.battery_v.toFixed(2) + " V", "num");
  cell(tr, "heap", n.heap_free === null ? "–" : bytes(n.heap_free), "num");
  return tr;
}

function render(d) {
  const g = d.gateway, u = d.uplink, q = d.queue;
  document.getElementById("gw-id").textContent = plain(g.id);
  document.title = "citysense " + plain(g.id);
  set("uplink.state", plain(u.state), u.state === "connected" ? "good" : "bad");
  set("uplink.broker", plain(u.broker));
  set("uplink.protocol", u.protocol ? "MQTT " + u.protocol : "–");
  set("uplink.published", plain(u.published));
  set("uplink.publish_errors", plain(u.publish_errors), u.publish_errors ? "warn" : "");
  const refused = Object.keys(u.refused).length;
  set("uplink.refused", counts(u.refused), refused ? "warn" : "");
  set("uplink.last_error", plain(u.last_error), u.last_error ? "warn" : "");
  set("queue.depth", plain(q.depth));
  set("queue.size", bytes(q.bytes) + " of " + bytes(q.max_bytes));
  set("queue.oldest", q.oldest_age_s === null ? "empty" : age(q.oldest_age_s));
  set("queue.moved_aside", q.moved_aside ? "moved aside at start" : "no", q.moved_aside ? "bad" : "");
  set("gateway.accepted", plain(g.accepted));
  set("gateway.duplicates", plain(g.duplicates));
  set("gateway.rejects", counts(g.rejects));
  set("gateway.frame_errors", counts(g.frame_errors));
  set("gateway.version", plain(g.version));
  set("gateway.uptime", age(g.uptime_s));
  const sync = g.clock_synchronised;
  set("gateway.clock", sync === null ? "unknown" : sync ? "synchronised" : "NOT synchronised",
      sync ? "good" : "warn");
  const today = d.disk_writes.length ? d.disk_writes[d.disk_writes.length - 1] : null;
  set("gateway.written_today", today ? bytes(today.bytes) : "–");
  set("gateway.ports", g.ports.length ? g.ports.map(short).join(", ") : "none");
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(...d.nodes.map(nodeRow));
  const quiet = d.nodes.filter((n) => n.state === "quiet").length;
  document.getElementById("node-count").textContent =
    "(" + d.nodes.length + (quiet ? ", " + quiet + " quiet" : "") + ")";
  document.getElementById("no-nodes").hidden = d.nodes.length > 0;
}

function status(state, text) {
  const el = document.getElementById("conn");
  el.dataset.conn = state;
  el.textContent = text;
}

async function poll() {
  try {
    const r = await fetch("api/status", { headers, cache: "no-store" });
    if (r.status === 401) {
      status("unauthorised", "401: this page needs the gateway's token (?token=…)");
    } else if (!r.ok) {
      status("error", "gateway answered " + r.status);
    } else {
      render(await r.json());
      status("live", "live · " + new Date().toLocaleTimeString());
    }
  } catch (e) {
    status("lost", "no answer from the gateway (retrying)");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
