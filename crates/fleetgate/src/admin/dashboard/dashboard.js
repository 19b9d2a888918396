// fleetgate dashboard: polls the admin API and writes through it. No framework, no build step.
// Every request carries X-Fleetgate: 1 (required for cookie-authenticated writes: CSRF) and the
// session cookie (HttpOnly, set by POST /v1/session); the token never lives in this script.
"use strict";

const POLL_MS = 3000;
const DAY = 86400;
const MIN_TIMELINE_DAYS = 90;
let timelineSpan = MIN_TIMELINE_DAYS * DAY; // now -> the latest expiry, at least 90 days
const MAX_EVENTS = 100;

const $ = (id) => document.getElementById(id);
let sites = new Map(); // id -> site view (with spec)
let prev = null; // the last poll, for events
const events = [];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

async function api(method, path, body, extra) {
  const headers = Object.assign({ "X-Fleetgate": "1" }, extra || {});
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = null;
  const text = await res.text();
  if (text) {
    try { json = JSON.parse(text); } catch (_) { json = { detail: text }; }
  }
  return { status: res.status, ok: res.ok, json, headers: res.headers };
}

// A problem document (RFC 9457) as one line per fault.
function problemText(p) {
  if (!p) return "no answer";
  const lines = [p.detail || p.title || "error"];
  for (const e of p.errors || []) lines.push(`${e.field}: ${e.detail}`);
  if (p.field && !(p.errors || []).length) lines[0] = `${p.field}: ${lines[0]}`;
  return lines.join("\n");
}

class Unauthorized extends Error {}

async function getJson(path) {
  const r = await api("GET", path);
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) throw new Error(`${path}: ${problemText(r.json)}`);
  return r.json;
}

async function allSites() {
  const out = [];
  let cursor = null;
  do {
    const page = await getJson("/v1/sites?limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    out.push(...page.sites);
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

function when(unix) {
  if (unix === null || unix === undefined) return "–";
  return new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function ago(secs) {
  if (secs < 90) return `${secs} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  return `${Math.round(secs / 3600)} h ago`;
}

function badge(state) {
  return el("span", { class: `state state-${state}` }, state);
}

function action(spec) {
  if (spec.redirect) return `redirect ${spec.redirect.status || 301} → ${spec.redirect.to}`;
  if (spec.proxy) return `proxy → ${spec.proxy.upstreams.join(", ")}`;
  if (spec.respond) return `respond ${spec.respond.status || 200}`;
  return "–";
}

// Position through the CSSOM: the page's CSP refuses style attributes.
function place(span, left, width) {
  span.style.left = `${left}%`;
  span.style.width = `${width}%`;
  return span;
}

function timeline(cert) {
  const now = Date.now() / 1000;
  const span = timelineSpan;
  const pct = (t) => Math.max(0, Math.min(100, ((t - now) / span) * 100));
  const bar = el("div", { class: "timeline" });
  if (cert.renewal_window) {
    const [a, b] = cert.renewal_window;
    const left = pct(a);
    const width = Math.max(1, pct(b) - left);
    bar.append(place(el("span", { class: "renew", title: `renewal ${when(a)} – ${when(b)}` }), left, width));
  }
  if (cert.not_after) {
    bar.append(place(el("span", { class: "exp", title: `expires ${when(cert.not_after)}` }), Math.min(99, pct(cert.not_after)), 1));
  }
  return bar;
}

// Events: the node's (GET /v1/events: certificates, failures, leases, nodes) and this page's
// own (site changes it saw or made), newest first.
let serverEvents = [];
const EVENT_LABEL = {
  "certificate": "certificate",
  "failed": "order failed for",
  "recovered": "recovered:",
  "lease-taken-over": "lease taken over:",
  "node-joined": "node joined:",
  "node-silent": "node went silent:",
  "node-back": "node back:",
};

function event(text) {
  events.unshift({ at: new Date(), text });
  events.length = Math.min(events.length, MAX_EVENTS);
  renderEvents();
}

function renderEvents() {
  const all = serverEvents
    .map((e) => ({ at: new Date(e.at * 1000), text: `${EVENT_LABEL[e.kind] || e.kind} ${e.subject}: ${e.detail}`, kind: e.kind }))
    .concat(events)
    .sort((a, b) => b.at - a.at)
    .slice(0, MAX_EVENTS);
  $("events").replaceChildren(...all.map((e) =>
    el("li", { class: e.kind === "failed" || e.kind === "node-silent" ? "bad" : "" },
      el("time", {}, e.at.toISOString().slice(11, 19)), e.text)));
}

// Site changes between two polls (the node reports certificates, nodes and leases itself).
function diff(now) {
  if (!prev) return;
  for (const s of now.sites) {
    const o = prev.sites.get(s.id);
    if (!o) event(`site ${s.id} added`);
    else if (o.version !== s.version) event(`site ${s.id} changed (version ${s.version})`);
  }
  for (const id of prev.sites.keys()) if (!now.sites.some((s) => s.id === id)) event(`site ${id} removed`);
}

function renderCerts(certs) {
  $("certs-count").textContent = `(${certs.length})`;
  const now = Date.now() / 1000;
  const latest = Math.max(0, ...certs.map((c) => (c.not_after || 0) - now));
  timelineSpan = Math.max(MIN_TIMELINE_DAYS * DAY, latest * 1.05);
  $("timeline-days").textContent = Math.round(timelineSpan / DAY);
  $("certs").tBodies[0].replaceChildren(...certs.map((c) => el("tr", { "data-cert": c.id },
    el("td", {}, el("strong", {}, c.id), el("div", { class: "muted" }, c.domains.join(", ")), el("div", { class: "muted" }, c.source + (c.issuer ? ` · ${c.issuer}` : ""))),
    el("td", {}, badge(c.state)),
    el("td", {}, when(c.not_after), c.days_left !== null ? el("div", { class: "muted" }, `${c.days_left} days`) : null),
    el("td", { class: "wide" }, timeline(c)),
    el("td", { class: "err" }, c.last_error || ""),
    el("td", {}, c.source === "files" ? null : el("button", { onclick: () => renew(c.id) }, "Renew now")),
  )));
}

function renderSites(list) {
  $("sites-count").textContent = `(${list.length})`;
  $("sites").tBodies[0].replaceChildren(...list.map((s) => el("tr", { "data-site": s.id },
    el("td", {}, el("strong", {}, s.id)),
    el("td", {}, s.source),
    el("td", {}, s.spec.domains.join(", ")),
    el("td", {}, action(s.spec)),
    s.source === "registry"
      ? el("td", {},
        el("button", { onclick: () => edit(s.id) }, "Edit"),
        el("button", { onclick: (e) => removeSite(s.id, e.target) }, "Remove"))
      : el("td", { class: "muted" }, "config file"),
  )));
}

function renderNodes(n) {
  $("nodes-count").textContent = `(${n.nodes.length})`;
  $("nodes").tBodies[0].replaceChildren(...n.nodes.map((x) => el("tr", {},
    el("td", {}, el("strong", {}, x.node)),
    el("td", {}, badge(x.state)),
    el("td", {}, ago(x.last_seen_secs_ago)),
    el("td", {}, x.version),
    el("td", {}, x.certificates),
    el("td", { class: "muted" }, `${x.listen_http} ${x.listen_https}`),
  )));
  $("locks").tBodies[0].replaceChildren(...n.locks.map((l) => el("tr", {},
    el("td", {}, l.name), el("td", {}, l.owner), el("td", {}, l.token),
    el("td", {}, l.expires_in_secs === null ? "–" : `${l.expires_in_secs} s`))));
}

async function refresh() {
  try {
    const [certs, list, nodes, recent] = await Promise.all([
      getJson("/v1/certs"), allSites(), getJson("/v1/nodes"), getJson("/v1/events"),
    ]);
    serverEvents = recent.events;
    showMain();
    sites = new Map(list.map((s) => [s.id, s]));
    renderCerts(certs.certs);
    renderSites(list);
    renderNodes(nodes);
    diff({ sites: list });
    prev = { sites: new Map(list.map((s) => [s.id, s])) };
    renderEvents();
    $("status").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    $("status").className = "muted";
  } catch (e) {
    if (e instanceof Unauthorized) { showLogin(); return; }
    $("status").textContent = String(e.message || e);
    $("status").className = "error";
  }
}

function showLogin() {
  $("main").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("status").textContent = "token needed";
}

let tokenRequired = false;

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = !tokenRequired;
}

async function login(ev) {
  ev.preventDefault();
  const r = await api("POST", "/v1/session", { token: $("token").value });
  $("token").value = "";
  if (!r.ok) { $("login-error").textContent = problemText(r.json); return; }
  $("login-error").textContent = "";
  tokenRequired = true;
  await refresh();
}

async function logout() {
  await api("DELETE", "/v1/session");
  prev = null;
  showLogin();
}

async function renew(id) {
  const r = await api("POST", `/v1/certs/${encodeURIComponent(id)}/renew`);
  event(r.ok ? `renewal of ${id} requested (replaces serial ${r.json.replaces_serial})` : `renewal of ${id} refused: ${problemText(r.json)}`);
  refresh();
}

function resetForm() {
  $("site-form").reset();
  $("site-editing").value = "";
  $("site-version").value = "";
  $("site-error").textContent = "";
  $("editor-title").textContent = "Add a site";
  $("site-save").textContent = "Add site";
  targetHint();
}

function edit(id) {
  const s = sites.get(id);
  if (!s) return;
  resetForm();
  $("site-editing").value = id;
  $("site-version").value = s.version;
  $("site-domains").value = s.spec.domains.join("\n");
  if (s.spec.proxy) { $("site-action").value = "proxy"; $("site-target").value = s.spec.proxy.upstreams.join(", "); }
  else if (s.spec.respond) { $("site-action").value = "respond"; $("site-target").value = s.spec.respond.status || 200; }
  else if (s.spec.redirect) { $("site-action").value = "redirect"; $("site-target").value = s.spec.redirect.to; }
  $("editor-title").textContent = `Edit ${id}`;
  $("site-save").textContent = "Save";
  targetHint();
  $("editor").open = true;
  $("site-domains").focus();
}

function targetHint() {
  const a = $("site-action").value;
  $("site-target").placeholder = a === "redirect" ? "https://www.example.com/" : a === "proxy" ? "http://10.0.0.5:8080, http://10.0.0.6:8080" : "200";
}

async function saveSite(ev) {
  ev.preventDefault();
  const editing = $("site-editing").value;
  const domains = $("site-domains").value.split(/[\s,]+/).filter(Boolean);
  const base = editing ? structuredClone(sites.get(editing).spec) : {};
  delete base.redirect; delete base.proxy; delete base.respond;
  const spec = Object.assign(base, { domains });
  const target = $("site-target").value.trim();
  switch ($("site-action").value) {
    case "redirect": spec.redirect = { to: target }; break;
    case "proxy": spec.proxy = { upstreams: target.split(/[\s,]+/).filter(Boolean) }; break;
    case "respond": spec.respond = { status: Number(target || 200) }; break;
  }
  const r = editing
    ? await api("PUT", `/v1/sites/${encodeURIComponent(editing)}`, spec, { "If-Match": $("site-version").value })
    : await api("POST", "/v1/sites", spec);
  if (!r.ok) { $("site-error").textContent = problemText(r.json); return; }
  event(editing ? `site ${editing} saved from this page` : `site ${domains[0]} added from this page`);
  resetForm();
  $("editor").open = false;
  refresh();
}

async function removeSite(id, button) {
  if (button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.textContent = "Really remove?";
    return;
  }
  const r = await api("DELETE", `/v1/sites/${encodeURIComponent(id)}`);
  event(r.ok ? `site ${id} removed from this page` : `removing ${id} failed: ${problemText(r.json)}`);
  refresh();
}

document.addEventListener("DOMContentLoaded", async () => {
  const session = await api("GET", "/v1/session");
  tokenRequired = Boolean(session.ok && session.json && session.json.token_required);
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("site-form").addEventListener("submit", saveSite);
  $("site-cancel").addEventListener("click", () => { resetForm(); $("editor").open = false; });
  $("site-action").addEventListener("change", targetHint);
  refresh();
  setInterval(refresh, POLL_MS);
});
