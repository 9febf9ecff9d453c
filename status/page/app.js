// The status page: it polls the relay and draws what it says. Every
// message-derived string goes in with textContent, never as markup.
"use strict";
const token = document.querySelector('meta[name="csrf"]').content;
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}
function age(iso) { return ago(iso).replace(" ago", ""); }
function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso), s = Math.round((d - Date.now()) / 1000);
  if (s <= 0) return "now";
  if (s < 60) return "in " + s + " s";
  return d.toLocaleTimeString();
}

function banner(r) {
  const b = $("banner");
  b.dataset.state = r.state;
  $("headline").textContent = r.headline;
  const why = $("why");
  why.replaceChildren();
  const row = (k, v) => { if (v) { why.append(el("dt", k), el("dd", v)); } };
  if (!r.ok) {
    row("Since", r.since ? new Date(r.since).toLocaleString() : "");
    row("What happened", r.error);
    row("What to do", r.remedy);
    row("What the relay does", r.doing);
  }
}

function cards(r) {
  $("version").textContent = r.version;
  $("port").textContent = r.port || "–";
  $("port-note").textContent = r.port_note || (r.port === 587 ? "STARTTLS" : "");
  $("last-delivery").textContent = r.last_delivery ? ago(r.last_delivery) : "none yet";
  const limit = r.daily_limit || 0;
  $("today").textContent = limit ? `${r.sent_today} of about ${limit} messages` : `${r.sent_today} messages`;
  const used = limit ? Math.min(1, Math.max(r.sent_today, r.recipients_today) / limit) : 0;
  $("today-fill").style.width = Math.round(used * 100) + "%";
  $("today-bar").className = "bar" + (used >= 1 ? " full" : used >= 0.8 ? " high" : "");
  $("today-bar").setAttribute("aria-valuenow", Math.round(used * 100));
}

function why(f) {
  const td = el("td", null, "why");
  if (!f) { td.textContent = "–"; return td; }
  td.append(el("span", f.stage + ": " + f.error));
  if (f.remedy) td.append(el("small", f.remedy));
  return td;
}

function button(label, action, id, cls) {
  const b = el("button", label, cls);
  b.type = "button";
  b.dataset.action = action;
  b.dataset.id = id;
  return b;
}

// rows fills a table; each cell is labelled with its column's heading,
// which a narrow screen shows beside it (the table becomes a list).
function rows(table, items, cells) {
  const labels = [...table.tHead.rows[0].cells].map((th) => th.textContent);
  table.hidden = items.length === 0;
  table.tBodies[0].replaceChildren(...items.map((it) => {
    const tr = el("tr");
    tr.dataset.id = it.id;
    cells(it).forEach((td, i) => {
      td.dataset.label = labels[i] || "";
      if (td.childNodes.length > 1) { const d = el("div"); d.append(...td.childNodes); td.append(d); }
      tr.append(td);
    });
    return tr;
  }));
}

function lists(r) {
  $("queued").textContent = r.queued ? "(" + r.queued + ")" : "";
  $("failed").textContent = r.failed ? "(" + r.failed + ")" : "";
  $("queue-empty").hidden = r.queued > 0;
  $("failed-empty").hidden = r.failed > 0;
  $("retry-all").hidden = r.queued === 0;
  rows($("queue"), r.queue, (it) => {
    const act = el("td");
    act.append(button("Retry", "retry", it.id), button("Delete", "delete", it.id, "danger"));
    return [el("td", age(it.received)), el("td", it.from), el("td", it.to.join(", ")), el("td", it.subject, "subject"),
      el("td", it.attempts), why(it.last_failure), el("td", when(it.next_try)), act];
  });
  rows($("failed-list"), r.failed_items, (it) => {
    const act = el("td");
    act.append(button("Requeue", "requeue", it.id), button("Delete", "delete", it.id, "danger"));
    return [el("td", age(it.received)), el("td", it.from), el("td", it.to.join(", ")), el("td", it.subject, "subject"), why(it.last_failure), act];
  });
}

function events(lines) {
  $("events").replaceChildren(...lines.slice(0, 50).map((l) => {
    const li = el("li", null, l.level);
    const t = el("time", l.time ? new Date(l.time).toLocaleTimeString() : "");
    li.append(t, document.createTextNode(l.message + (l.queue_id ? " · " + l.queue_id : "") + (l.to ? " · to " + [].concat(l.to).join(", ") : "")));
    if (l.error) li.append(el("small", (l.stage ? l.stage + ": " : "") + l.error));
    if (l.remedy) li.append(el("small", l.remedy));
    return li;
  }));
}

async function refresh() {
  try {
    const [r, ev] = await Promise.all([fetch("/api/status").then((x) => x.json()), fetch("/api/events").then((x) => x.json())]);
    banner(r); cards(r); lists(r); events(ev);
    $("offline").hidden = true;
  } catch (e) {
    $("offline").hidden = false;
  }
}

async function post(path, id) {
  const body = new URLSearchParams({ csrf: token, id: id || "" });
  const res = await fetch(path, { method: "POST", body, headers: { "X-CSRF-Token": token }, credentials: "same-origin" });
  const ct = res.headers.get("Content-Type") || "";
  return ct.includes("json") ? res.json() : { ok: res.ok, message: await res.text() };
}

document.addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-action]");
  if (!b) return;
  if (b.dataset.action === "delete" && !confirm("Delete this message for good? It will not be sent.")) return;
  b.disabled = true;
  const r = await post("/api/" + b.dataset.action, b.dataset.id);
  $("tool-result").textContent = r.message;
  b.disabled = false;
  refresh();
});

$("retry-all").addEventListener("click", async () => { $("tool-result").textContent = (await post("/api/retry-all")).message; refresh(); });

$("send-test").addEventListener("click", async () => {
  $("tool-result").textContent = "Sending…";
  $("tool-result").textContent = (await post("/api/test")).message;
  refresh();
});

$("run-checks").addEventListener("click", async () => {
  const list = $("checks"), btn = $("run-checks");
  list.replaceChildren();
  btn.disabled = true;
  $("tool-result").textContent = "Checking…";
  let pending = null;
  const res = await fetch("/api/check", { method: "POST", body: new URLSearchParams({ csrf: token }), headers: { "X-CSRF-Token": token } });
  const reader = res.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
      const ev = /^event: (\w+)/m.exec(chunk), data = /^data: (.*)$/m.exec(chunk);
      if (!ev || !data) continue;
      const d = JSON.parse(data[1]);
      if (ev[1] === "begin") { pending = el("li", "… " + d.name); list.append(pending); }
      if (ev[1] === "step") {
        if (pending) { pending.remove(); pending = null; }
        const li = el("li", { ok: "✓ ", fail: "✗ ", warn: "! ", skip: "- " }[d.status] + d.name + (d.detail ? ": " + d.detail : ""), d.status);
        if (d.remedy && (d.status === "fail" || d.status === "warn")) li.append(el("small", d.remedy));
        list.append(li);
      }
      if (ev[1] === "done") $("tool-result").textContent = d.ok ? "Mail can flow." : "Mail cannot flow: fix the ✗ steps.";
    }
  }
  btn.disabled = false;
});

refresh();
setInterval(refresh, 2000);
