// The ondoki admin dashboard. The API key lives in this tab's sessionStorage (never in a
// URL or a cookie) and goes out as a bearer header to the /internal/admin/* routes. Data
// is written with textContent only, so nothing a job or a user wrote can run as markup.
"use strict";

const KEY = "ondoki.admin.key";
const POLL_MS = 2000;
const DOCTOR_MS = 30000;
let timer = null;
let lastDoctor = 0;

const $ = (id) => document.getElementById(id);

function apiKey() { return sessionStorage.getItem(KEY); }

async function call(method, path) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + apiKey() },
    cache: "no-store",
    credentials: "omit",
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    logout("The API key was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    const message = body.error ? body.error.message : response.statusText;
    throw new Error(`${method} ${path}: ${response.status} ${message}`);
  }
  return body;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, seconds);
  if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function when(epoch) { return epoch ? new Date(epoch * 1000).toLocaleString() : "–"; }

function cell(row, value, className) {
  const td = row.insertCell();
  if (value instanceof Node) td.append(value); else td.textContent = value ?? "–";
  if (className) td.className = className;
  return td;
}

function fill(tableId, items, render, empty) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (!items.length) {
    const row = body.insertRow();
    const td = cell(row, empty, "empty");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    return;
  }
  for (const item of items) {
    const row = body.insertRow();
    render(row, item);
  }
}

function short(id) { return id.length > 12 ? id.slice(0, 12) + "…" : id; }

function idCell(row, id) {
  const td = cell(row, short(id), "id");
  td.title = id;
}

function renderQueues(stats) {
  const queues = Object.entries(stats.queues).sort(([a], [b]) => a.localeCompare(b));
  fill("queues", queues, (row, [name, q]) => {
    row.dataset.queue = name;
    cell(row, name);
    cell(row, String(q.waiting));
    cell(row, String(q.delayed));
    cell(row, ago(q.oldest_age));
  }, "no queues");
}

function renderWorkers(data) {
  const now = data.now;
  fill("workers", data.workers, (row, w) => {
    idCell(row, w.id);
    cell(row, w.alive ? "alive" : "dead", w.alive ? "alive" : "dead");
    cell(row, w.host);
    cell(row, String(w.pid));
    cell(row, w.queues.join(", "));
    cell(row, ago(now - w.started_at));
    cell(row, ago(now - w.heartbeat_at) + " ago");
  }, "no worker has registered");
  const running = data.workers.filter((w) => w.alive).flatMap((w) => w.jobs.map((j) => [w, j]));
  fill("running", running, (row, [w, j]) => {
    row.dataset.job = j.job_id;
    idCell(row, j.job_id);
    cell(row, j.kind);
    cell(row, String(j.attempt));
    cell(row, j.stage || "starting");
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = j.progress;
    const box = document.createElement("span");
    box.append(bar, ` ${Math.round(j.progress * 100)} %`);
    cell(row, box);
    cell(row, ago(now - j.started_at));
    cell(row, `${w.host}:${w.pid}`);
  }, "nothing is running");
}

function renderDead(data) {
  fill("dead", data.jobs, (row, job) => {
    row.dataset.job = job.id;
    idCell(row, job.id);
    cell(row, job.kind);
    cell(row, job.owner);
    cell(row, `${job.attempts}/${job.max_attempts}`);
    cell(row, when(job.finished_at));
    cell(row, job.error, "error");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Retry";
    button.addEventListener("click", () => retry(job.id, button));
    cell(row, button);
  }, "no dead jobs");
}

function renderFailures(data) {
  fill("failures", data.jobs, (row, job) => {
    idCell(row, job.id);
    cell(row, job.kind);
    cell(row, job.state, job.state === "dead" ? "dead" : "");
    cell(row, `${job.attempts}/${job.max_attempts}`);
    cell(row, when(job.updated_at));
    cell(row, job.error, "error");
  }, "no recent failures");
}

function renderInstances(data) {
  const now = data.now;
  fill("instances", data.instances, (row, i) => {
    idCell(row, i.id);
    cell(row, i.alive ? "alive" : "silent", i.alive ? "alive" : "dead");
    cell(row, String(i.websockets));
    cell(row, String(i.notifications_published));
    cell(row, i.pubsub_ok ? "ok" : `failing: ${i.pubsub_error}`, i.pubsub_ok ? "alive" : "dead");
    cell(row, ago(now - i.started_at));
  }, "no instance has announced itself yet");
}

function renderDoctor(data) {
  fill("doctor", data.findings, (row, f) => {
    cell(row, f.target);
    cell(row, f.check);
    cell(row, f.severity, "sev-" + f.severity);
    cell(row, f.message);
    cell(row, f.fix);
  }, "no findings");
}

async function retry(jobId, button) {
  button.disabled = true;
  try {
    const record = await call("POST", `/internal/admin/jobs/${encodeURIComponent(jobId)}/retry`);
    $("retried").textContent = `Job ${record.id} is ${record.state} again.`;
    $("retried").dataset.job = record.id;
    $("retried").dataset.state = record.state;
  } catch (error) {
    $("retried").textContent = String(error.message);
  }
  await refresh();
}

async function refresh() {
  if (!apiKey()) return;
  try {
    const [queues, workers, dead, failures, instances] = await Promise.all([
      call("GET", "/internal/admin/queues"),
      call("GET", "/internal/admin/workers"),
      call("GET", "/internal/admin/jobs/dead?limit=50"),
      call("GET", "/internal/admin/jobs/failures?limit=20"),
      call("GET", "/internal/admin/instances"),
    ]);
    renderQueues(queues);
    renderWorkers(workers);
    renderDead(dead);
    renderFailures(failures);
    renderInstances(instances);
    if (Date.now() - lastDoctor > DOCTOR_MS) {
      lastDoctor = Date.now();
      renderDoctor(await call("GET", "/internal/admin/doctor"));
    }
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (error.message !== "unauthorized") $("status").textContent = String(error.message);
  }
}

function show(loggedIn) {
  $("login").hidden = loggedIn;
  $("dashboard").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
}

function start() {
  show(true);
  lastDoctor = 0;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, POLL_MS);
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  delete document.body.dataset.loaded;
  show(false);
  $("login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("key").value = "";
    $("login-error").textContent = "";
    start();
  });
  $("logout").addEventListener("click", () => logout());
  if (apiKey()) start(); else show(false);
});
