// TensorGrid dashboard: read-only views of a submitter's jobs and the grid's nodes.
// Every value from the server is inserted as text (createTextNode / textContent), never as
// markup: a job's spec is written by its submitter and may hold anything.
"use strict";

const TOKEN_KEY = "tensorgrid-dashboard-token";
const POLL_MS = 2000;
let token = "";
let timer = null;

function takeToken() {
  // The link carries the token in the fragment (never sent to a server); keep it for this tab
  // only and drop it from the address bar and history at once.
  const hash = window.location.hash.replace(/^#/, "");
  const params = new URLSearchParams(hash);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token") || "");
    history.replaceState(null, "", window.location.pathname + "#/jobs");
  }
  token = sessionStorage.getItem(TOKEN_KEY) || "";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || "HTTP " + status);
    this.status = status;
    this.how = (body && body.how) || "";
  }
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function formatEth(wei) {
  if (wei === null || wei === undefined) return "-";
  const value = BigInt(wei);
  const unit = 10n ** 18n;
  const frac = (value % unit).toString().padStart(18, "0").replace(/0+$/, "");
  return (value / unit).toString() + (frac ? "." + frac : "") + " ETH";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "-";
}

function stateCell(state) {
  return el("td", { class: "state state-" + state.replace(/[^a-z]/g, ""), "data-state": state }, state);
}

function progress(job) {
  const box = el("span", {});
  box.append(el("progress", { value: job.tasks_done, max: Math.max(1, job.tasks_total) }));
  box.append(" " + job.tasks_done + "/" + job.tasks_total);
  return box;
}

function showAuthProblem(main, error) {
  main.replaceChildren(el("div", { class: "notice", id: "auth-error" },
    el("p", {}, el("strong", {}, "You are not signed in. "), error.message),
    el("p", {}, "Get a link with your submitter key:"),
    el("pre", {}, "tensorgrid dashboard --coordinator HOST:PORT --key YOUR_KEY --open"),
    el("p", {}, "The link carries a read-only session token after the # sign: it is never sent to the server "
      + "in the URL. It shows your jobs until it expires (8 hours by default) and can change nothing: "
      + "the coordinator's API refuses it for submitting, spending or cancelling.")));
}

async function viewJobs(main) {
  const body = await api("/api/jobs?limit=100");
  const rows = body.jobs.map((job) => el("tr", { class: "job", "data-job": job.job_id },
    el("td", { class: "mono" }, el("a", { href: "#/job/" + job.job_id, title: job.job_id }, job.job_id.slice(0, 16) + "…")),
    el("td", {}, job.kind), stateCell(job.state), el("td", {}, progress(job)),
    el("td", {}, when(job.created_ms)), el("td", { class: "error" }, job.error)));
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ...["job", "kind", "state", "progress", "submitted", "error"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
  main.replaceChildren(el("h2", {}, "Your jobs"), rows.length ? table : el("p", { id: "no-jobs" }, "No jobs yet."));
}

function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [name, value, id] of pairs) {
    dl.append(el("dt", {}, name), el("dd", id ? { id } : {}, value));
  }
  return dl;
}

function verificationSection(v) {
  if (!v) return el("p", {}, "No verification report.");
  const checks = Object.entries(v.checks).map(([key, n]) => el("tr", {}, el("td", {}, key), el("td", { class: "num" }, n)));
  return el("div", { id: "verification" },
    el("p", { id: "verification-summary" }, v.summary),
    checks.length ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "check:outcome"), el("th", {}, "count"))),
      el("tbody", {}, ...checks)) : null);
}

function settlementSection(s) {
  if (!s.priced) {
    return el("div", { id: "settlement" }, el("p", {}, "No escrow: a free job on a grid that does not settle on chain."));
  }
  const writes = s.chain.map((w) => el("tr", { class: "chain-write", "data-action": w.action, "data-state": w.state },
    el("td", {}, w.action), el("td", { class: "state" }, w.state), el("td", { class: "mono" }, w.tx_hash || "-"),
    el("td", { class: "num" }, w.attempts), el("td", { class: "error" }, w.error)));
  return el("div", { id: "settlement" },
    facts([
      ["escrow budget", formatEth(s.budget_wei), "escrow-budget"],
      ["reward per task", formatEth(s.reward_per_task_wei)],
      ["charged (confirmed on chain)", formatEth(s.charged_wei), "escrow-charged"],
      ["charged (epoch on its way)", formatEth(s.posting_wei)],
      ["earned, not yet in an epoch", formatEth(s.pending_wei)],
      ["void (never payable)", formatEth(s.void_wei)],
      ["refunded", s.refunded_wei === null ? "not yet (the escrow is open)" : formatEth(s.refunded_wei), "escrow-refunded"],
      ["void reason", s.void_reason || "-"],
    ]),
    el("h4", {}, "Chain writes"),
    writes.length ? el("table", { id: "chain-writes" },
      el("thead", {}, el("tr", {}, ...["action", "state", "transaction", "attempts", "error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...writes)) : el("p", {}, "None yet."));
}

function plot(rounds) {
  const W = 640, H = 260, L = 50, R = 50, T = 15, B = 35;
  const svg = svgEl("svg", { class: "plot", id: "training-plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const losses = rounds.flatMap((r) => [r.eval_loss, r.train_loss]).filter((x) => x !== null && x !== undefined);
  const maxLoss = Math.max(1e-9, ...losses) * 1.1;
  const n = rounds.length;
  const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const yLoss = (v) => T + (H - T - B) * (1 - v / maxLoss);
  const yAcc = (v) => T + (H - T - B) * (1 - v);
  svg.append(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: W - R, y1: T, x2: W - R, y2: H - B }));
  const label = (text, attrs) => { const t = svgEl("text", attrs); t.textContent = text; svg.append(t); };
  label(maxLoss.toFixed(3), { x: 4, y: T + 10 });
  label("0", { x: L - 12, y: H - B });
  label("100%", { x: W - R + 4, y: T + 10 });
  label("round", { x: W / 2 - 15, y: H - 5 });
  rounds.forEach((r, i) => label(String(r.round + 1), { x: x(i) - 3, y: H - B + 14 }));
  const series = [["loss", "eval_loss", yLoss], ["train-loss", "train_loss", yLoss], ["accuracy", "eval_accuracy", yAcc]];
  for (const [cls, key, y] of series) {
    const points = rounds.map((r, i) => [r, i]).filter(([r]) => r[key] !== null && r[key] !== undefined);
    if (!points.length) continue;
    svg.append(svgEl("polyline", { class: cls, points: points.map(([r, i]) => `${x(i)},${y(r[key])}`).join(" ") }));
    for (const [r, i] of points) {
      const dot = svgEl("circle", { class: cls, cx: x(i), cy: y(r[key]), r: 3.5, "data-round": r.round, "data-value": r[key] });
      const tip = svgEl("title", {});
      tip.textContent = `round ${r.round + 1}: ${key} ${r[key]}`;
      dot.append(tip);
      svg.append(dot);
    }
  }
  return svg;
}

function trainingSection(rounds) {
  const rows = rounds.map((r) => el("tr", { class: "round" }, el("td", { class: "num" }, r.round + 1),
    el("td", { class: "num" }, r.eval_loss === null ? "-" : r.eval_loss.toFixed(4)),
    el("td", { class: "num" }, r.eval_accuracy === null ? "-" : (100 * r.eval_accuracy).toFixed(1) + "%"),
    el("td", { class: "num" }, r.train_loss === null ? "-" : r.train_loss.toFixed(4)),
    el("td", { class: "num" }, r.workers), el("td", { class: "num" }, (r.bytes_up / 1000).toFixed(1) + " kB")));
  return el("div", { id: "training" },
    el("div", { class: "legend" }, el("span", { class: "loss" }, "● held-out loss"),
      el("span", { class: "train-loss" }, "● training loss"), el("span", { class: "accuracy" }, "● accuracy (right axis)")),
    plot(rounds),
    el("table", { id: "rounds" }, el("thead", {}, el("tr", {},
      ...["round", "held-out loss", "accuracy", "train loss", "workers", "sent"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows)));
}

async function viewJob(main, jobId) {
  let job;
  try {
    job = await api("/api/jobs/" + encodeURIComponent(jobId));
  } catch (e) {
    if (e.status !== 404) throw e;
    main.replaceChildren(el("h2", {}, "Job"), el("p", { id: "not-found", class: "error" }, e.message));
    return;
  }
  const parts = [
    el("p", {}, el("a", { href: "#/jobs" }, "← all jobs")),
    el("h2", {}, "Job ", el("span", { class: "mono", id: "job-id" }, job.job_id)),
    facts([
      ["state", job.state, "job-state"],
      ["kind", job.kind, "job-kind"],
      ["progress", progress(job), "job-progress"],
      ["failed attempts", job.task_failures],
      ["submitted", when(job.created_ms)],
      ["updated", when(job.updated_ms)],
      ["submitter", job.submitter],
      ["result", job.result ? job.result.sha256 + " (" + job.result.size + " bytes)" : "-", "job-result"],
      ["error", job.error || "-", "job-error"],
    ]),
    el("h3", {}, "Verification"), verificationSection(job.verification),
    el("h3", {}, "Settlement"), settlementSection(job.settlement),
    job.rounds.length ? el("h3", {}, "Training") : null,
    job.rounds.length ? trainingSection(job.rounds) : null,
    el("h3", {}, "Spec"), el("pre", { class: "spec", id: "job-spec" }, JSON.stringify(job.spec, null, 2))];
  main.replaceChildren(...parts.filter((part) => part !== null));  // replaceChildren would print null
}

async function viewNodes(main) {
  const body = await api("/api/nodes");
  const now = body.now_ms;
  const rows = body.nodes.map((n) => el("tr", { class: "node", "data-node": n.address },
    el("td", { class: "mono" }, n.address), el("td", {}, n.device_kind),
    el("td", { class: "num" }, n.completed), el("td", { class: "num" }, n.verified), el("td", { class: "num" }, n.caught),
    el("td", { class: "num" }, n.consecutive_valid), el("td", { class: "num" }, n.failures + n.rejections),
    el("td", { class: "num" }, n.stake_wei === null ? "-" : formatEth(n.stake_wei)),
    el("td", { class: "num" }, formatEth(n.earned_wei)), el("td", { class: "num" }, formatEth(n.slashed_wei)),
    el("td", {}, (n.draining ? "draining, " : "") + "seen " + Math.max(0, Math.round((now - n.last_seen_ms) / 1000)) + " s ago")));
  main.replaceChildren(el("h2", {}, "Nodes"), el("table", { id: "nodes" },
    el("thead", {}, el("tr", {}, ...["node", "device", "done", "verified", "caught", "streak", "failed",
      "stake", "earned", "slashed", "last seen"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows)));
}

async function refresh() {
  const main = document.getElementById("main");
  const route = window.location.hash.replace(/^#\/?/, "") || "jobs";
  document.getElementById("nav-jobs").classList.toggle("current", route === "jobs");
  document.getElementById("nav-nodes").classList.toggle("current", route === "nodes");
  try {
    if (route === "nodes") {
      await viewNodes(main);
    } else if (!token) {
      showAuthProblem(main, new ApiError(401, { error: "this page was opened without a session token." }));
      return;
    } else if (route.startsWith("job/")) {
      await viewJob(main, route.slice(4));
    } else {
      await viewJobs(main);
    }
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showAuthProblem(main, e);
    else main.replaceChildren(el("p", { class: "error", id: "load-error" }, "Could not load: " + e.message));
  }
}

async function whoAmI() {
  if (!token) return;
  try {
    const me = await api("/api/me");
    document.getElementById("who").textContent = me.address + (me.operator ? " (operator)" : "");
  } catch (e) {
    document.getElementById("who").textContent = "";
  }
}

function start() {
  takeToken();
  whoAmI();
  refresh();
  timer = setInterval(refresh, POLL_MS);
  window.addEventListener("hashchange", () => { takeToken(); whoAmI(); refresh(); });
}

document.addEventListener("DOMContentLoaded", start);
