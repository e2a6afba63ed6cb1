/**
 * The dashboard's single page: one HTML document with its CSS and JavaScript inline, no build step and no external
 * resource (as `HttpApiSwagger` serves Swagger UI), so `Dashboard.layer` can mount it anywhere and an operator can load
 * it from a box without internet access.
 *
 * It reads the dashboard's JSON API only, through URLs relative to the page (`api/...`), so it works mounted under a
 * prefix; the overview and the projections are kept live by the server-sent events of `api/live`. Everything it shows
 * from the store (stream ids, payloads, reasons) is user data: the script builds the DOM with `textContent` and
 * attributes, never with `innerHTML`, so nothing from the store is ever parsed as HTML.
 *
 * The script is plain ES2017 in a string: no template literals (the string itself is one), no dependencies.
 *
 * @internal
 */

const style = String.raw`
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#dde2ea;--bg:#f6f7f9;--card:#fff;--accent:#2457c5;--ok:#1e7f43;--warn:#a86400;
--crit:#b3261e;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
*{box-sizing:border-box}body{margin:0}
header{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;padding:.6rem 1.2rem;background:#182033;color:#fff}
header strong{font-size:15px;letter-spacing:.02em}
nav{display:flex;gap:.2rem}nav a{color:#c9d4ea;text-decoration:none;padding:.25rem .6rem;border-radius:4px}
nav a.active,nav a:hover{background:#2c3957;color:#fff}
.spacer{flex:1}
#live{font-size:12px;color:#c9d4ea}#live:before{content:"\25CF ";color:#8a94a8}
#live[data-state=live]:before{color:#46c37b}#live[data-state=polling]:before{color:#e0a526}
#live[data-state=reconnecting]:before{color:#e0574c}
.badge{font-size:12px;padding:.1rem .5rem;border-radius:9px;background:#3a4766;color:#fff}
header form{margin:0}header label{font-size:12px;color:#c9d4ea}header input{margin-left:.3rem;width:11rem}
main{padding:1rem 1.2rem;max-width:1400px;margin:0 auto}
h1{font-size:18px;margin:.2rem 0 .8rem}h2{font-size:15px;margin:1.4rem 0 .5rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.8rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.7rem .9rem}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{display:block;font-size:22px;font-weight:600;margin-top:.2rem;font-variant-numeric:tabular-nums}
.card .value.small{font-size:14px;font-weight:500}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);border-radius:6px}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:0}tr.current td{background:#eef3ff}
.mono,code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.7rem;overflow:auto;max-height:28rem;margin:0}
a{color:var(--accent)}
.crit{color:var(--crit);font-weight:600}.warn{color:var(--warn)}.ok{color:var(--ok)}.muted{color:var(--muted)}
#error{background:#fdecea;border:1px solid #f1b0aa;color:var(--crit);padding:.6rem .8rem;border-radius:6px;margin-bottom:.8rem;
white-space:pre-wrap}
#notice{background:#e9f5ee;border:1px solid #a9d8bb;color:var(--ok);padding:.6rem .8rem;border-radius:6px;margin-bottom:.8rem}
form.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:flex-end;margin-bottom:.8rem}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted)}
input,button{font:inherit}input{padding:.25rem .4rem;border:1px solid #b9c2cf;border-radius:4px}
button{padding:.25rem .7rem;border:1px solid #b9c2cf;border-radius:4px;background:#fff;cursor:pointer}
button:hover{border-color:var(--accent)}button.danger{color:var(--crit)}
.pager{display:flex;gap:1rem;margin:.7rem 0}
.bar{display:flex;gap:.6rem;align-items:center;margin:.6rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0 0 1rem}dt{color:var(--muted)}dd{margin:0}
tr[data-level=crit] td:first-child{box-shadow:inset 3px 0 var(--crit)}
tr[data-level=warn] td:first-child{box-shadow:inset 3px 0 var(--warn)}
tr[data-level=ok] td:first-child{box-shadow:inset 3px 0 var(--ok)}
.bar a.active{color:var(--fg);font-weight:600;text-decoration:none}
progress{width:7rem;vertical-align:middle;margin-right:.4rem}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(22rem,1fr));gap:1rem}
footer{color:var(--muted);font-size:12px;padding:1rem 1.2rem}
`

const script = String.raw`
(function () {
  "use strict";
  var CONFIG = JSON.parse(document.getElementById("config").textContent);
  var TOKEN_KEY = "effect-eventstore.adminToken";
  var base = (function () {
    var u = new URL(document.baseURI);
    // served at "/ops" rather than "/ops/": the API is still under the page's own path
    if (!/\/$/.test(u.pathname) && !/\.[a-z]+$/i.test(u.pathname)) u.pathname += "/";
    u.search = ""; u.hash = "";
    return u;
  })();
  var state = { overview: null, view: null, generation: 0 };

  // ---- DOM: elements are built, never parsed, so every value from the store is text ----
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === undefined || v === null || v === false) return;
      if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = String(v);
      else el.setAttribute(k, v === true ? "" : String(v));
    });
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) c.forEach(function (x) { add(el, x); });
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  function $(id) { return document.getElementById(id); }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

  // ---- formatting ----
  function int(n) { return typeof n === "number" ? n.toLocaleString("en-US") : "\u2013"; }
  function rate(n) { return typeof n === "number" ? (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1)) : "\u2013"; }
  function secs(s) {
    if (typeof s !== "number") return "\u2013";
    if (s < 60) return (s < 10 && Math.round(s * 10) % 10 ? s.toFixed(1) : Math.round(s)) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + Math.round(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " m";
    return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
  }
  function time(iso) {
    if (!iso) return "\u2013";
    var ms = Date.parse(iso);
    if (isNaN(ms)) return String(iso);
    var ago = (Date.now() - ms) / 1000;
    return String(iso).replace("T", " ").replace(/\.\d+Z$|Z$/, "") + (ago >= 0 ? " (" + secs(ago) + " ago)" : "");
  }
  // a time with how long ago it was, kept current by the ticker below
  function when(iso) { return h("span", { "data-time": iso || "" }, time(iso)); }
  function json(v) { try { return JSON.stringify(v, null, 2); } catch (e) { return String(v); } }
  function hrefStream(id) { return "#/stream/" + encodeURIComponent(id); }
  function hrefEvent(id) { return "#/event/" + encodeURIComponent(id); }
  function hrefParked(name) { return "#/parked?projection=" + encodeURIComponent(name); }

  // ---- API ----
  function api(path, params) {
    var u = new URL("api/" + path, base);
    if (params) Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
    });
    return u.toString();
  }
  function ApiError(status, body, text) {
    this.status = status; this.body = body;
    var what = body && typeof body === "object" && body._tag ? body._tag : "HTTP " + status;
    var detail = "";
    if (body && typeof body === "object") {
      if (typeof body.message === "string" && body.message) detail = body.message;
      else if (typeof body.reason === "string" && Object.keys(body).length === 2) detail = body.reason;
      else detail = Object.keys(body).filter(function (k) { return k !== "_tag"; }).map(function (k) {
        var v = body[k];
        return k + ": " + (typeof v === "string" ? v : json(v));
      }).join(", ");
    } else if (text) detail = text.slice(0, 300);
    if (status === 401) detail = (detail ? detail + " \u2013 " : "") + "type the admin token in the header";
    if (status === 403) detail = (detail ? detail + " \u2013 " : "") + "the dashboard is read-only (no admin token configured)";
    this.message = what + (detail ? ": " + detail : "");
  }
  function request(method, path, params) {
    var headers = { accept: "application/json" };
    var token = method === "POST" ? readToken() : "";
    if (token) headers.authorization = "Bearer " + token;
    return fetch(api(path, params), { method: method, headers: headers }).then(function (res) {
      return res.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!res.ok) throw new ApiError(res.status, body, text);
        return body;
      });
    });
  }
  function get(path, params) { return request("GET", path, params); }
  function post(path, params) { return request("POST", path, params); }
  function readToken() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }

  // ---- messages ----
  function showError(e) {
    var box = $("error");
    box.textContent = e && e.message ? e.message : String(e);
    box.hidden = false;
  }
  function showNotice(text) { var box = $("notice"); box.textContent = text; box.hidden = false; }
  function clearMessages() { $("error").hidden = true; $("notice").hidden = true; }

  // ---- live overview: server-sent events, polling when they are not available ----
  function onOverview(o) {
    state.overview = o;
    if (state.view && state.view.update) state.view.update(o);
  }
  function setLive(s) { var el = $("live"); el.setAttribute("data-state", s); el.textContent = s; }
  var pollTimer = null;
  function poll() {
    if (pollTimer) return;
    setLive("polling");
    pollTimer = setInterval(function () {
      get("overview").then(onOverview, function () { setLive("reconnecting"); });
    }, Math.max(250, CONFIG.liveIntervalMs));
  }
  function connect() {
    if (!window.EventSource) return poll();
    var es = new EventSource(api("live"));
    es.addEventListener("overview", function (e) {
      setLive("live");
      try { onOverview(JSON.parse(e.data)); } catch (err) { showError(err); }
    });
    es.addEventListener("failure", function (e) {
      setLive("reconnecting");
      try { showError(new Error("live overview: " + JSON.parse(e.data).error)); } catch (err) { showError(err); }
    });
    es.onopen = function () { setLive("live"); };
    es.onerror = function () {
      // CLOSED: the server refused the stream (a proxy, an old server); otherwise the browser reconnects by itself
      if (es.readyState === 2) poll(); else setLive("reconnecting");
    };
  }

  // ---- projections table (overview and projections page), updated in place so buttons survive updates ----
  var FIELDS = [
    ["name", "Projection", ""], ["state", "State", ""], ["position", "Position", "num"], ["head", "Head", "num"],
    ["lag", "Lag", "num"], ["lagSeconds", "Lag (time)", "num"], ["stalledSeconds", "Stalled", "num"],
    ["eventsPerSecond", "Events/s", "num"], ["parked", "Parked", "num"], ["problem", "Last error", ""],
    ["rebuild", "Rebuild", ""]
  ];
  function levelOf(p) {
    if (p.failure || p.state === "failed") return "crit";
    if (p.stalledSeconds > 0 && p.lag > 0 && p.stalledSeconds >= 60) return "warn";
    if (p.parked > 0) return "warn";
    return "ok";
  }
  function setCell(td, text, value) {
    if (td.textContent !== text) td.textContent = text;
    if (value !== undefined) td.setAttribute("data-value", String(value)); else td.removeAttribute("data-value");
  }
  function fillRow(tr, p) {
    var cells = {};
    Array.prototype.forEach.call(tr.cells, function (td) { cells[td.getAttribute("data-field")] = td; });
    tr.setAttribute("data-level", levelOf(p));
    var nameLink = cells.name.firstChild;
    if (!nameLink) add(cells.name, h("a", { href: hrefParked(p.name), title: "parked events of " + p.name }, p.name));
    cells.name.setAttribute("data-value", p.name);
    setCell(cells.state, p.state || (p.leased ? "leased" : "\u2013"), p.state);
    setCell(cells.position, int(p.position), p.position);
    if (cells.head) setCell(cells.head, int(p.head), p.head);
    setCell(cells.lag, int(p.lag), p.lag);
    setCell(cells.lagSeconds, secs(p.lagSeconds), p.lagSeconds);
    setCell(cells.stalledSeconds, secs(p.stalledSeconds), p.stalledSeconds);
    setCell(cells.eventsPerSecond, rate(p.eventsPerSecond), p.eventsPerSecond);
    setCell(cells.parked, int(p.parked), p.parked);
    var problem = p.failure ? "failed at " + p.failure.position + " (" + p.failure.eventType + "): " + p.failure.reason
      : p.lastParked ? "parked " + p.lastParked.position + " (" + p.lastParked.eventType + "): " + p.lastParked.reason : "";
    setCell(cells.problem, problem, undefined);
    cells.problem.className = p.failure ? "crit" : p.lastParked ? "warn" : "";
    var r = p.rebuild, td = cells.rebuild;
    if (!r) { if (td.firstChild) clear(td); td.removeAttribute("data-value"); return; }
    var total = Math.max(r.total, r.processed, 1);
    var text = r.done ? "done: " + int(r.processed) + " events" :
      int(r.processed) + " / " + int(r.total) + ", " + rate(r.eventsPerSecond) + " ev/s" +
      (typeof r.etaMillis === "number" ? ", ETA " + secs(r.etaMillis / 1000) : "");
    td.setAttribute("data-value", String(r.processed));
    var bar = td.querySelector("progress"), label = td.querySelector("span");
    if (!bar) { clear(td); bar = h("progress", { max: 1 }); label = h("span"); add(td, [bar, label]); }
    bar.value = r.done ? 1 : r.processed / total;
    label.textContent = text;
  }
  function projectionRow(p, actions) {
    var tr = h("tr", { "data-projection": p.name });
    FIELDS.forEach(function (f) {
      if (f[0] === "head" && !actions) return;
      tr.appendChild(h("td", { "data-field": f[0], "class": f[2] || null }));
    });
    if (actions) {
      var td = h("td", { "data-field": "actions" });
      if (!CONFIG.readOnly) {
        add(td, h("button", { type: "button", "data-action": "rebuild", onclick: function () { rebuild(p.name); } }, "Rebuild"));
        add(td, " ");
      }
      add(td, h("a", { href: hrefParked(p.name) }, "parked"));
      tr.appendChild(td);
    }
    fillRow(tr, p);
    return tr;
  }
  function projectionTable(actions) {
    var head = h("tr");
    FIELDS.forEach(function (f) { if (f[0] !== "head" || actions) add(head, h("th", { "class": f[2] || null }, f[1])); });
    if (actions) add(head, h("th", null, "Actions"));
    var tbody = h("tbody");
    var table = h("table", { id: "projections" }, h("thead", null, head), tbody);
    var empty = h("p", { "class": "muted", hidden: true }, "No projections: none has a checkpoint in this store yet.");
    function sync(list) {
      var rows = {};
      Array.prototype.forEach.call(tbody.rows, function (tr) { rows[tr.getAttribute("data-projection")] = tr; });
      list.forEach(function (p, i) {
        var tr = rows[p.name];
        if (tr) { delete rows[p.name]; fillRow(tr, p); } else tr = projectionRow(p, actions);
        if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
      });
      Object.keys(rows).forEach(function (k) { tbody.removeChild(rows[k]); });
      empty.hidden = list.length > 0;
      table.hidden = list.length === 0;
    }
    return { el: [table, empty], sync: sync };
  }
  function rebuild(name) {
    if (!confirm("Rebuild projection " + name + "? Its read model is built again from the start of the log.")) return;
    clearMessages();
    post("projections/" + encodeURIComponent(name) + "/rebuild").then(function () {
      showNotice("Rebuild of " + name + " started: its progress shows in the Rebuild column.");
    }, showError);
  }

  // ---- views ----
  function withOverview(update) {
    if (state.overview) update(state.overview);
    else get("overview").then(function (o) { if (!state.overview) onOverview(o); }, showError);
  }
  function viewOverview(root) {
    var card = function (label, id, small) {
      return h("div", { "class": "card" }, h("span", { "class": "label" }, label),
        h("span", { id: id, "class": small ? "value small" : "value" }, "\u2013"));
    };
    var table = projectionTable(false);
    add(root, [
      h("h1", null, "Overview"),
      h("div", { "class": "cards" }, card("Head position", "head"), card("Events / s", "events-per-second"),
        card("Last event", "last-recorded-at", true), card("Parked events", "parked-total")),
      h("h2", null, "Projections"), table.el,
      h("div", { id: "bus", hidden: "" }, h("h2", null, "Bus consumers"),
        h("table", null, h("thead", null, h("tr", null, h("th", null, "Consumer"), h("th", null, "Stream"),
          h("th", { "class": "num" }, "Pending"), h("th", { "class": "num" }, "Unacked"),
          h("th", { "class": "num" }, "Redelivered"), h("th", null, "Last active"))),
          h("tbody", { id: "bus-rows" })))
    ]);
    function syncBus(list) {
      var box = $("bus"), body = $("bus-rows");
      if (!list) { box.hidden = true; return; }
      box.hidden = false;
      while (body.firstChild) body.removeChild(body.firstChild);
      list.forEach(function (c) {
        body.appendChild(h("tr", { "data-consumer": c.name }, h("td", null, c.name), h("td", null, c.stream),
          h("td", { "class": "num", "data-field": "pending" }, int(c.pending)),
          h("td", { "class": "num", "data-field": "ackPending" }, int(c.ackPending)),
          h("td", { "class": "num" }, int(c.redelivered)), h("td", null, c.lastActive ? time(c.lastActive) : "\u2013")));
      });
    }
    function update(o) {
      syncBus(o.bus);
      setCell($("head"), int(o.head), o.head);
      setCell($("events-per-second"), rate(o.eventsPerSecond), o.eventsPerSecond);
      setCell($("last-recorded-at"), time(o.lastRecordedAt), o.lastRecordedAt);
      $("last-recorded-at").setAttribute("data-time", o.lastRecordedAt || "");
      setCell($("parked-total"), int(o.parked), o.parked);
      $("parked-total").className = "value" + (o.parked > 0 ? " warn" : "");
      table.sync(o.projections);
    }
    withOverview(update);
    return { update: update };
  }
  function viewProjections(root) {
    var table = projectionTable(true);
    add(root, [h("h1", null, "Projections"), table.el,
      h("p", { "class": "muted" }, "Stalled: how long the checkpoint has stood still while events wait after it. " +
        (CONFIG.readOnly ? "The dashboard is read-only: start it with an admin token to rebuild or repair." :
          "Actions need the admin token (typed in the header).")
      )]);
    withOverview(function (o) { table.sync(o.projections); });
    return { update: function (o) { table.sync(o.projections); } };
  }
  function filterInput(label, name, value, type) {
    return h("label", null, label, h("input", { name: name, value: value || "", type: type || "text" }));
  }
  function toMs(local) { if (!local) return undefined; var ms = new Date(local).getTime(); return isNaN(ms) ? undefined : ms; }
  function hashOf(path, params) {
    var q = new URLSearchParams();
    Object.keys(params).forEach(function (k) { if (params[k] !== undefined && params[k] !== "") q.set(k, params[k]); });
    var s = q.toString();
    return "#" + path + (s ? "?" + s : "");
  }
  function viewStreams(root, params, gen) {
    var f = {};
    ["prefix", "type", "eventType", "since", "until"].forEach(function (k) { f[k] = params.get(k) || ""; });
    var form = h("form", { "class": "filters", id: "stream-filters" },
      filterInput("Stream id prefix", "prefix", f.prefix), filterInput("Stream type", "type", f.type),
      filterInput("Event type", "eventType", f.eventType),
      filterInput("Last event since", "since", f.since, "datetime-local"),
      filterInput("Last event before", "until", f.until, "datetime-local"),
      h("button", { type: "submit" }, "Filter"), h("a", { href: "#/streams" }, "clear"));
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var p = {};
      Array.prototype.forEach.call(form.elements, function (el) { if (el.name) p[el.name] = el.value.trim(); });
      location.hash = hashOf("/streams", p);
    });
    var body = h("div", null, h("p", { "class": "muted" }, "loading\u2026"));
    add(root, [h("h1", null, "Streams"), form, body]);
    var after = params.get("after") || "";
    get("streams", {
      prefix: f.prefix, type: f.type, eventType: f.eventType, since: toMs(f.since), until: toMs(f.until), after: after,
      limit: 50
    }).then(function (page) {
      if (gen !== state.generation) return;
      clear(body);
      if (page.streams.length === 0) return add(body, h("p", { "class": "muted", id: "no-streams" }, "No streams match."));
      add(body, h("table", { id: "streams" },
        h("thead", null, h("tr", null, h("th", null, "Stream"), h("th", null, "Type"), h("th", { "class": "num" }, "Version"),
          h("th", null, "Last event"))),
        h("tbody", null, page.streams.map(function (s) {
          return h("tr", { "data-stream": s.streamId },
            h("td", { "class": "mono" }, h("a", { href: hrefStream(s.streamId) }, s.streamId)),
            h("td", null, s.streamType), h("td", { "class": "num", "data-field": "version" }, int(s.version)),
            h("td", null, when(s.lastRecordedAt)));
        }))));
      var pager = h("div", { "class": "pager" });
      if (after) add(pager, h("a", { href: hashOf("/streams", f), id: "first-page" }, "\u2190 first page"));
      if (page.next !== undefined) {
        var np = Object.assign({}, f, { after: page.next });
        add(pager, h("a", { href: hashOf("/streams", np), id: "next-page" }, "next page \u2192"));
      }
      add(body, pager);
    }, function (e) { if (gen === state.generation) { clear(body); showError(e); } });
  }
  function eventTable(events, options) {
    var o = options || {};
    var cols = [["Position", "num"], ["Event", ""]];
    if (o.stream) cols.push(["Stream", ""]);
    cols.push(["Version", "num"], ["Type", ""], ["Recorded", ""]);
    return h("table", { id: o.id || null },
      h("thead", null, h("tr", null, cols.map(function (c) { return h("th", { "class": c[1] || null }, c[0]); }))),
      h("tbody", null, events.map(function (e) {
        return h("tr", { "data-event": e.eventId, "data-position": e.position, "class": e.eventId === o.current ? "current" : null },
          h("td", { "class": "num" }, int(e.position)),
          h("td", { "class": "mono" }, h("a", { href: hrefEvent(e.eventId) }, e.eventId)),
          o.stream ? h("td", { "class": "mono" }, h("a", { href: hrefStream(e.streamId) }, e.streamId)) : null,
          h("td", { "class": "num", "data-field": "version" }, int(e.version)),
          h("td", { "data-field": "type" }, e.type), h("td", null, when(e.recordedAt)));
      })));
  }
  function viewStream(root, id, params, gen) {
    var direction = params.get("direction") === "backward" ? "backward" : "forward";
    var from = params.get("from") || "";
    var body = h("div", null, h("p", { "class": "muted" }, "loading\u2026"));
    var here = "/stream/" + encodeURIComponent(id);
    add(root, [
      h("h1", null, "Stream ", h("span", { "class": "mono", id: "stream-id" }, id)),
      h("div", { "class": "bar" }, "Order:",
        h("a", { href: hashOf(here, {}), "class": direction === "forward" ? "active" : null, id: "oldest-first" }, "oldest first"),
        h("a", { href: hashOf(here, { direction: "backward" }), id: "newest-first", "class": direction === "backward" ? "active" : null }, "newest first")),
      body
    ]);
    get("streams/" + encodeURIComponent(id), { from: from, direction: direction, limit: 50 }).then(function (page) {
      if (gen !== state.generation) return;
      clear(body);
      if (page.events.length === 0) return add(body, h("p", { "class": "muted" }, "No events."));
      add(body, eventTable(page.events, { id: "events" }));
      var pager = h("div", { "class": "pager" });
      if (from) add(pager, h("a", { href: hashOf(here, { direction: direction === "backward" ? "backward" : "" }) }, "\u2190 first page"));
      if (page.next !== undefined) {
        add(pager, h("a", { id: "next-page", href: hashOf(here, {
          direction: direction === "backward" ? "backward" : "", from: String(page.next)
        }) }, "next page \u2192"));
      }
      add(body, pager);
    }, function (e) { if (gen === state.generation) { clear(body); showError(e); } });
  }
  function viewEvent(root, id, gen) {
    var body = h("div", null, h("p", { "class": "muted" }, "loading\u2026"));
    add(root, [h("h1", null, "Event ", h("span", { "class": "mono" }, id)), body]);
    get("events/" + encodeURIComponent(id)).then(function (d) {
      if (gen !== state.generation) return;
      var e = d.event, m = e.metadata && typeof e.metadata === "object" ? e.metadata : {};
      var link = function (v) { return typeof v === "string" && v ? h("a", { href: hrefEvent(v), "class": "mono" }, v) : "\u2013"; };
      clear(body);
      add(body, [
        h("dl", { id: "event" },
          h("dt", null, "Event id"), h("dd", { "class": "mono", "data-field": "eventId" }, e.eventId),
          h("dt", null, "Position"), h("dd", { "data-field": "position" }, String(e.position)),
          h("dt", null, "Stream"), h("dd", { "data-field": "streamId" }, h("a", { href: hrefStream(e.streamId), "class": "mono" }, e.streamId)),
          h("dt", null, "Stream type"), h("dd", null, e.streamType),
          h("dt", null, "Version"), h("dd", { "data-field": "version" }, String(e.version)),
          h("dt", null, "Type"), h("dd", { "data-field": "type" }, e.type + (e.schemaVersion > 1 ? " (schema v" + e.schemaVersion + ")" : "")),
          h("dt", null, "Recorded"), h("dd", null, when(e.recordedAt)),
          h("dt", null, "Correlation id"), h("dd", { "class": "mono", "data-field": "correlationId" }, m.correlationId || "\u2013"),
          h("dt", null, "Caused by"), h("dd", { "data-field": "causationId" }, link(m.causationId))),
        h("div", { "class": "cols" },
          h("div", null, h("h2", null, "Payload"), h("pre", { id: "payload" }, json(e.payload))),
          h("div", null, h("h2", null, "Metadata"), h("pre", { id: "metadata" }, json(e.metadata)))),
        h("h2", null, "Causes (nearest first)"),
        d.causes.length ? eventTable(d.causes, { stream: true, id: "causes" }) : h("p", { "class": "muted" }, "None."),
        h("h2", null, "Related (same correlation id, or caused by it)"),
        d.related.length ? eventTable(d.related, { stream: true, id: "related", current: e.eventId }) :
          h("p", { "class": "muted" }, "None.")
      ]);
    }, function (e) { if (gen === state.generation) { clear(body); showError(e); } });
  }
  function viewParked(root, params, gen) {
    var projection = params.get("projection") || "";
    var after = params.get("after") || "";
    var body = h("div", null, h("p", { "class": "muted" }, "loading\u2026"));
    add(root, [h("h1", null, "Parked events", projection ? [" of ", h("span", { "class": "mono" }, projection)] : null), body]);
    function act(kind, p, position, until) {
      var what = (until !== undefined ? "the parked events " + position + " to " + until : "parked event " + position) +
        " of " + p;
      var text = kind === "skip" ? "Skip " + what + "? They are deleted and never handled." :
        "Retry " + what + "? Each is handed to the projection's handler again.";
      if (!confirm(text)) return;
      clearMessages();
      post("parked/" + encodeURIComponent(p) + "/" + kind, { position: position, until: until }).then(function (r) {
        route();
        showNotice(kind === "skip" ? "Skipped " + r.deleted + " parked event(s) of " + p + "." :
          "Retried " + r.retried + " parked event(s) of " + p + ".");
      }, showError);
    }
    get("parked", { projection: projection, after: after, limit: 100 }).then(function (page) {
      if (gen !== state.generation) return;
      clear(body);
      if (page.parked.length === 0) return add(body, h("p", { "class": "muted", id: "no-parked" }, "No parked events."));
      var first = page.parked[0].position, last = page.parked[page.parked.length - 1].position;
      if (projection && !CONFIG.readOnly) {
        add(body, h("div", { "class": "bar" },
          h("button", { type: "button", "data-action": "retry-all", onclick: function () { act("retry", projection, first, last); } },
            "Retry these " + page.parked.length),
          h("button", { type: "button", "class": "danger", "data-action": "skip-all",
            onclick: function () { act("skip", projection, first, last); } }, "Skip these " + page.parked.length)));
      }
      add(body, h("table", { id: "parked" },
        h("thead", null, h("tr", null, ["Projection", "Position", "Stream", "Type", "Reason", "Parked"].map(function (t) {
          return h("th", null, t);
        }), CONFIG.readOnly ? null : h("th", null, "Actions"))),
        h("tbody", null, page.parked.map(function (p) {
          return h("tr", { "data-parked": p.position, "data-projection": p.projection },
            h("td", null, h("a", { href: hrefParked(p.projection) }, p.projection)),
            h("td", { "class": "num" }, h("a", { href: hrefEvent(p.eventId) }, int(p.position))),
            h("td", { "class": "mono" }, h("a", { href: hrefStream(p.streamId) }, p.streamId)),
            h("td", null, p.eventType), h("td", { "class": "warn" }, p.reason), h("td", null, when(p.parkedAt)),
            CONFIG.readOnly ? null : h("td", null,
              h("button", { type: "button", "data-action": "retry", onclick: function () { act("retry", p.projection, p.position); } }, "Retry"), " ",
              h("button", { type: "button", "class": "danger", "data-action": "skip",
                onclick: function () { act("skip", p.projection, p.position); } }, "Skip")));
        }))));
      if (page.next !== undefined) {
        add(body, h("div", { "class": "pager" }, h("a", { id: "next-page",
          href: hashOf("/parked", { projection: projection, after: String(page.next) }) }, "next page \u2192")));
      }
    }, function (e) { if (gen === state.generation) { clear(body); showError(e); } });
  }

  // ---- routing: #/, #/streams?..., #/stream/<id>?..., #/event/<id>, #/projections, #/parked?projection= ----
  function route() {
    var hash = location.hash.replace(/^#/, "") || "/";
    var q = hash.indexOf("?");
    var path = q < 0 ? hash : hash.slice(0, q);
    var params = new URLSearchParams(q < 0 ? "" : hash.slice(q + 1));
    var gen = ++state.generation;
    var root = clear($("view"));
    clearMessages();
    state.view = null;
    var section = path.split("/")[1] || "";
    Array.prototype.forEach.call(document.querySelectorAll("nav a"), function (a) {
      a.className = a.getAttribute("data-nav") === (section === "stream" ? "streams" : section || "overview") ? "active" : "";
    });
    var rest = path.slice(section.length + 2);
    var decode = function (s) { try { return decodeURIComponent(s); } catch (e) { return s; } };
    if (section === "") state.view = viewOverview(root);
    else if (section === "projections") state.view = viewProjections(root);
    else if (section === "streams") viewStreams(root, params, gen);
    else if (section === "stream" && rest) viewStream(root, decode(rest), params, gen);
    else if (section === "event" && rest) viewEvent(root, decode(rest), gen);
    else if (section === "parked") viewParked(root, params, gen);
    else add(root, [h("h1", null, "Not found"), h("p", null, h("a", { href: "#/" }, "Back to the overview"))]);
    document.title = (root.querySelector("h1") ? root.querySelector("h1").textContent + " \u2013 " : "") + "effect-eventstore";
  }

  // ---- header: read-only badge, or the admin token field ----
  var tools = $("tools");
  if (CONFIG.readOnly) add(tools, h("span", { id: "mode", "class": "badge", title: "no admin token is configured" }, "read-only"));
  else {
    var input = h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "for actions", value: readToken() });
    input.addEventListener("input", function () {
      try { sessionStorage.setItem(TOKEN_KEY, input.value); } catch (e) { /* storage disabled: kept for this page only */ }
    });
    // in a form of its own: a password field outside one is flagged by browsers; Enter must not reload the page
    add(tools, h("form", { onsubmit: function (e) { e.preventDefault(); } }, h("label", null, "Admin token", input)));
  }
  $("interval").textContent = String(CONFIG.liveIntervalMs);
  setInterval(function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-time]"), function (el) {
      var iso = el.getAttribute("data-time");
      if (iso) el.textContent = time(iso);
    });
  }, 1000);
  window.addEventListener("hashchange", route);
  route();
  connect();
})();
`

// indentation and comment lines cost a quarter of the page's bytes; nothing in the script spans lines, so both go
const compact = (source: string): string => source.replace(/\n[ \t]+/g, "\n").replace(/\n\/\/[^\n]*/g, "")
const styleText = compact(style)
const scriptText = compact(script)

// JSON in a <script> element: only "<" could end it early ("</script>"); escaped, it stays data
const embed = (value: unknown): string => JSON.stringify(value).replace(/</g, "\\u003c")

/**
 * The dashboard page. `readOnly` hides every action (the server refuses them anyway); `liveIntervalMs` is the pace of
 * the server's live updates, used for polling when server-sent events are not available.
 *
 * @internal
 */
export const page = (options: { readonly readOnly: boolean; readonly liveIntervalMs: number }): string =>
  `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>effect-eventstore</title>
<link rel="icon" href="data:,">
<style>${styleText}</style>
</head>
<body>
<header>
<strong>effect-eventstore</strong>
<nav><a href="#/" data-nav="overview">Overview</a><a href="#/streams" data-nav="streams">Streams</a><a href="#/projections" data-nav="projections">Projections</a><a href="#/parked" data-nav="parked">Parked</a></nav>
<span class="spacer"></span>
<span id="live" data-state="connecting">connecting</span>
<span id="tools"></span>
</header>
<main>
<div id="error" role="alert" hidden></div>
<div id="notice" role="status" hidden></div>
<div id="view"></div>
</main>
<footer>Live updates over server-sent events, at most every <span id="interval"></span> ms.</footer>
<script type="application/json" id="config">${
    embed({ readOnly: options.readOnly, liveIntervalMs: options.liveIntervalMs })
  }</script>
<script>${scriptText}</script>
</body>
</html>
`
