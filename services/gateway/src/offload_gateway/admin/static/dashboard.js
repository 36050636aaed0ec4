// Offload operations dashboard: plain JavaScript, no build step, no dependencies.
// Everything comes from /v1/admin/* with the admin key the operator typed in,
// kept in sessionStorage (this tab only). Live job events arrive over SSE, read
// with fetch() because EventSource cannot send an Authorization header.
"use strict";

const KEY_STORE = "offload.adminKey";
const STATUS_OF_EVENT = {
  queued: "waiting", started: "active", progress: "active", retrying: "delayed",
  completed: "completed", failed: "failed", cancelled: "cancelled",
};
const STATUSES = ["waiting", "active", "delayed", "completed", "failed", "cancelled"];
const MAX_JOBS = 200;

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  jobs: new Map(),      // id -> {id, type, tenant, status, attempt, updated}
  selected: null,       // job id whose timeline is shown
  stream: null,         // AbortController of the live stream
  lastEventId: null,
  deadQueue: null,
  timers: [],
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function shortTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return when.toLocaleTimeString([], { hour12: false }) + "." + String(when.getMilliseconds()).padStart(3, "0");
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  const answer = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const type = answer.headers.get("content-type") || "";
  const body = type.includes("json") ? await answer.json() : await answer.text();
  if (!answer.ok) {
    if (answer.status === 401 || answer.status === 403) signOut(body.detail || "not allowed");
    throw new ApiError(answer.status, body.detail || `HTTP ${answer.status}`);
  }
  return body;
}

// ------------------------------------------------------------------ sign in / out

async function signIn(key) {
  state.key = key;
  $("#login-error").textContent = "";
  try {
    await refreshQueues();   // checks the key before anything is shown
  } catch (error) {
    if (state.key) $("#login-error").textContent = error.message;
    return;
  }
  sessionStorage.setItem(KEY_STORE, key);
  $("#login").hidden = true;
  $("#board").hidden = false;
  $("#signout").hidden = false;
  start();
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  if (state.stream) state.stream.abort();
  state.timers.forEach(clearInterval);
  state.timers = [];
  $("#board").hidden = true;
  $("#signout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = reason || "";
  setLive(false);
}

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#admin-key").value.trim());
});
$("#signout").addEventListener("click", () => signOut(""));

function start() {
  refreshDead();
  refreshAudit();
  openStream();
  state.timers.push(setInterval(refreshQueues, 3000));
  state.timers.push(setInterval(refreshAudit, 10000));
}

// ------------------------------------------------------------------ queues

async function refreshQueues() {
  const view = await api("/v1/admin/queues");
  const body = $("#queues tbody");
  body.replaceChildren(...view.queues.filter((q) => q.exists).map((q) => el(
    "tr", { class: q.kind, "data-queue": q.name },
    el("td", {}, q.name), el("td", {}, q.kind + (q.tier ? ` ${q.tier}` : "")),
    el("td", { class: "num" + (q.kind === "dead" && q.ready > 0 ? " ready-positive" : "") }, q.ready),
    el("td", { class: "num unacked" }, q.unacked ?? "?"),
    el("td", { class: "num" }, q.consumers),
  )));
  $("#queues-at").textContent = `read ${shortTime(view.read_at)} · ${view.dead_letters} dead`;
  $("#unacked-note").textContent = view.unacked_note;
  const select = $("#dead-queue");
  const dead = view.queues.filter((q) => q.kind === "dead" && q.exists);
  if (select.options.length !== dead.length) {
    select.replaceChildren(...dead.map((q) => el("option", { value: q.name }, q.name)));
    const withLetters = dead.find((q) => q.ready > 0);
    select.value = state.deadQueue || (withLetters ? withLetters.name : dead[0]?.name);
  }
  for (const q of dead) {
    const option = [...select.options].find((o) => o.value === q.name);
    if (option) option.textContent = `${q.name} (${q.ready})`;
  }
  state.deadQueue = select.value;
  // Letters also arrive without a job event the page would notice (a webhook delivery
  // parked in notifier.dead): read the shown queue again when its depth changes.
  const shown = dead.find((q) => q.name === state.deadQueue);
  const depth = shown ? `${shown.name}:${shown.ready}` : null;
  if (state.deadDepth !== undefined && depth !== state.deadDepth) refreshDead();
  state.deadDepth = depth;
}

// ------------------------------------------------------------------ jobs, live

function setLive(on) {
  const pill = $("#live");
  pill.textContent = on ? "live" : "offline";
  pill.className = "pill " + (on ? "on" : "off");
}

function applySnapshot(view) {
  for (const job of view.jobs.slice().reverse()) {
    state.jobs.set(job.id, {
      id: job.id, type: job.type, tenant: job.tenant, status: job.status, attempt: job.attempt,
      updated: job.finished_at || job.started_at || job.created_at,
    });
  }
  renderJobs();
}

function applyEvent(event) {
  const known = state.jobs.get(event.job_id);
  const job = known || { id: event.job_id, type: event.type, tenant: event.tenant };
  job.status = STATUS_OF_EVENT[event.event] || job.status;
  job.attempt = event.attempt;
  job.updated = event.at;
  state.jobs.delete(event.job_id);   // re-insert: the map's order is recency
  state.jobs.set(event.job_id, job);
  while (state.jobs.size > MAX_JOBS) state.jobs.delete(state.jobs.keys().next().value);
  renderJobs();
  if (state.selected === event.job_id) showTimeline(event.job_id);
  if (event.event === "failed") setTimeout(() => { refreshDead(); refreshQueues(); }, 300);
}

function renderJobs() {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const job of state.jobs.values()) counts[job.status] = (counts[job.status] || 0) + 1;
  $("#counts").replaceChildren(...STATUSES.map((s) => el(
    "span", { class: "count", "data-status": s }, el("span", { class: `status ${s}` }, s), el("b", {}, counts[s]),
  )));
  const rows = [...state.jobs.values()].reverse().map((job) => el(
    "tr", {
      class: "clickable" + (job.id === state.selected ? " selected" : ""), "data-job": job.id,
      onclick: () => showTimeline(job.id),
    },
    el("td", {}, el("code", {}, job.id.slice(0, 12))), el("td", {}, job.type), el("td", {}, job.tenant),
    el("td", {}, el("span", { class: `status ${job.status}`, "data-status": job.status }, job.status)),
    el("td", { class: "num" }, job.attempt), el("td", {}, shortTime(job.updated)),
  ));
  $("#jobs tbody").replaceChildren(...rows);
}

async function openStream() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  while (!controller.signal.aborted && state.key) {
    try {
      const headers = { Authorization: `Bearer ${state.key}` };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const answer = await fetch("/v1/admin/events?snapshot=100", { headers, signal: controller.signal });
      if (answer.status === 401 || answer.status === 403) { signOut("the admin key was refused"); return; }
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      setLive(true);
      await readEvents(answer.body);
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;   // a ping
      if (id) state.lastEventId = id;
      const payload = JSON.parse(data.join("\n"));
      if (kind === "snapshot") applySnapshot(payload);
      else if (kind === "job") applyEvent(payload);
    }
  }
}

// ------------------------------------------------------------------ timeline

async function showTimeline(jobId) {
  state.selected = jobId;
  renderJobs();
  let detail;
  try {
    detail = await api(`/v1/admin/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    $("#timeline-card").hidden = false;
    $("#timeline").replaceChildren(el("li", { class: "error" }, error.message));
    return;
  }
  if (state.selected !== jobId) return;
  const job = detail.job;
  $("#timeline-card").hidden = false;
  $("#timeline-job").textContent = job.id;
  const summary = [
    ["type", job.type], ["tenant", job.tenant], ["status", job.status],
    ["attempt", `${job.attempt} of ${job.max_attempts}`],
  ];
  if (job.error) summary.push(["error", `${job.error.type}: ${job.error.message}`]);
  $("#timeline-summary").replaceChildren(...summary.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  $("#timeline").replaceChildren(...detail.events.map(({ event }) => {
    let extra = "";
    if (event.progress) extra = ` ${Math.round(event.progress.percent)}% ${event.progress.message}`;
    if (event.error) extra = ` — ${event.error.message}`;
    return el(
      "li", { "data-event": event.event },
      el("span", { class: "at" }, shortTime(event.at)),
      el("span", { class: `status ${STATUS_OF_EVENT[event.event]}` }, event.event),
      ` attempt ${event.attempt}${extra}`,
    );
  }));
}

// ------------------------------------------------------------------ dead letters

$("#dead-queue").addEventListener("change", (event) => { state.deadQueue = event.target.value; refreshDead(); });

async function refreshDead() {
  const queue = state.deadQueue || $("#dead-queue").value;
  if (!queue) return;
  const page = await api(`/v1/admin/dead-letters/${encodeURIComponent(queue)}?limit=100`);
  // A webhook delivery (notifier.dead) names its job, the event it carried and the
  // receiver's origin (never the URL's path or query, which may hold a token).
  const hook = (letter) => letter.webhook
    ? ` · webhook ${letter.webhook.event || "?"} → ${letter.webhook.url_origin || "?"}` : "";
  $("#dead tbody").replaceChildren(...page.items.map((letter) => el(
    "tr", { "data-job": letter.job_id || "", "data-webhook": letter.webhook?.webhook_id },
    el("td", {}, letter.job_id ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); showTimeline(letter.job_id); } }, letter.job_id.slice(0, 12)) : "(not a job)"),
    el("td", {}, letter.type || ""), el("td", {}, letter.tenant || ""),
    el("td", { class: "why" }, (letter.error || letter.reason) + hook(letter)),
    el("td", { class: "num" }, letter.attempts ?? ""), el("td", {}, shortTime(letter.failed_at)),
    el("td", {}, letter.job_id ? el("button", { class: "replay", onclick: () => replay(queue, [letter.job_id]) }, "Replay") : ""),
  )));
  const more = page.next_offset !== null ? ` (showing ${page.items.length})` : "";
  if (!$("#dead-status").dataset.sticky) $("#dead-status").textContent = `${page.total} in ${queue}${more}`;
}

async function replay(queue, jobIds) {
  const body = jobIds ? { job_ids: jobIds } : { all: true };
  const status = $("#dead-status");
  try {
    const report = await api(`/v1/admin/dead-letters/${encodeURIComponent(queue)}/replay`, {
      method: "POST", body: JSON.stringify(body),
    });
    const skipped = report.skipped.length ? `; ${report.skipped.length} left: ${report.skipped.map((s) => s.reason).join("; ")}` : "";
    const hooks = report.webhook_ids?.length;
    const what = report.webhook_ids ? `${hooks} webhook deliver${hooks === 1 ? "y" : "ies"}` : report.replayed.length;
    status.textContent = `Replayed ${what}${skipped}`;
  } catch (error) {
    status.textContent = `Replay refused: ${error.message}`;
  }
  status.dataset.sticky = "1";
  setTimeout(() => { delete status.dataset.sticky; }, 5000);
  await Promise.all([refreshDead(), refreshQueues(), refreshAudit()]);
}

$("#replay-all").addEventListener("click", () => replay(state.deadQueue, null));
$("#purge").addEventListener("click", async () => {
  const queue = state.deadQueue;
  const typed = prompt(`Purging deletes every message in ${queue} for good. Type the queue's name to confirm:`);
  if (typed !== queue) return;
  try {
    const done = await api(`/v1/admin/dead-letters/${encodeURIComponent(queue)}?confirm=${encodeURIComponent(typed)}`, { method: "DELETE" });
    $("#dead-status").textContent = `Purged ${done.purged}`;
  } catch (error) {
    $("#dead-status").textContent = `Purge refused: ${error.message}`;
  }
  await Promise.all([refreshDead(), refreshQueues(), refreshAudit()]);
});

// ------------------------------------------------------------------ audit

async function refreshAudit() {
  const entries = await api("/v1/admin/audit?limit=10");
  $("#audit").replaceChildren(...entries.map((entry) => {
    const what = entry.action === "replay"
      ? `replayed ${entry.detail.replayed_count} from ${entry.queue}`
      : `purged ${entry.detail.purged} from ${entry.queue}`;
    return el("li", {}, `${shortTime(entry.at)} ${entry.actor} ${what}`);
  }));
}

if (state.key) signIn(state.key);
