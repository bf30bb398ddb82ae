// The page at /: one input through the three pipelines, one after another, each shown with its Server-Timing
// breakdown; the live E-P2.6 verdict beside them. Plain JavaScript, no dependencies, same-origin requests only.
"use strict";

const PIPELINES = [
  { name: "hybrid", what: "Qwen2.5-VL ∥ DINOv2 → fusion → LTX-Video" },
  { name: "vlm", what: "Qwen2.5-VL → adapter → LTX-Video (baseline)" },
  { name: "spatial", what: "DINOv2 → adapter → LTX-Video (baseline)" },
];
// Server-Timing names the gateway writes, in the order a request meets them; "other" is the rest of "gateway".
const STAGES = ["decode", "triton", "encode", "other"];
const VERDICT_REFRESH_MS = 10000;
const VIDEO_TYPES = /^video\//;

// What a status means to a person; the API's own message follows it.
const LEADS = {
  400: "The request was refused",
  401: "A valid API token is needed (type it in the API token field)",
  403: "This page's origin is not allowed to call the API",
  408: "The upload took too long",
  413: "The file is too large",
  422: "The file cannot be used",
  429: "The service is busy",
  500: "The gateway failed",
  502: "A model failed on this input",
  503: "The inference server is not available",
  504: "The inference server did not answer in time",
};
const VERDICTS = {
  within_budget: "within budget",
  over_budget: "over budget",
  inconclusive: "inconclusive",
  insufficient_samples: "not enough samples yet",
};

const $ = (selector, root = document) => root.querySelector(selector);
// Object URLs by owner ("original" or a pipeline), revoked when replaced; `runs` rotates which pipeline goes first.
const state = { file: null, urls: {}, results: {}, running: false, runs: 0, verdictTimer: 0 };

function authHeaders() {
  const token = $("#token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function sentence(text) {
  const trimmed = text.trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

// The API answers errors as {"error": {"code", "message"}}: the message, led by what the status means.
async function errorSentence(response) {
  let message = "";
  try {
    const body = await response.json();
    message = (body && body.error && body.error.message) || "";
  } catch (_) {
    message = "";
  }
  const lead = LEADS[response.status] || `The service answered ${response.status}`;
  let text = message ? `${lead}: ${message}` : lead;
  const retry = response.headers.get("Retry-After");
  if (retry && (response.status === 429 || response.status === 503)) {
    text = `${sentence(text)} Retry in ${retry} s`;
  }
  return sentence(text);
}

function networkSentence(error) {
  return sentence(`The gateway could not be reached (${error.message || error})`);
}

function parseServerTiming(value) {
  const timings = {};
  for (const entry of (value || "").split(",")) {
    const [name, ...params] = entry.split(";").map((part) => part.trim());
    for (const param of params) {
      const [key, number] = param.split("=");
      if (name && key.trim() === "dur" && !Number.isNaN(Number(number))) timings[name] = Number(number);
    }
  }
  if (timings.gateway !== undefined) {
    const known = ["decode", "triton", "encode"].reduce((sum, name) => sum + (timings[name] || 0), 0);
    timings.other = Math.max(timings.gateway - known, 0);
  }
  return timings;
}

function ms(value) {
  return value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

function kilobytes(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

function objectUrl(owner, blob) {
  if (state.urls[owner]) URL.revokeObjectURL(state.urls[owner]);
  state.urls[owner] = URL.createObjectURL(blob);
  return state.urls[owner];
}

// --- The form: bounds from the API's own schema, so the page cannot offer what the API refuses. ---

async function loadBounds() {
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) return;
    const schema = await response.json();
    const parameters = schema.paths["/reconstruct"].post.parameters;
    const find = (name) => parameters.find((p) => p.name === name);
    const frames = find("frames");
    const counts = frames && (frames.schema.enum || (frames.schema.anyOf || []).flatMap((s) => s.enum || []));
    const select = $("#frames");
    for (const count of counts || [1, 9, 17, 25, 33]) {
      const option = document.createElement("option");
      option.value = String(count);
      option.textContent = String(count);
      select.append(option);
    }
    const steps = find("steps");
    const maxSteps = steps && (steps.schema.maximum || (steps.schema.anyOf || []).map((s) => s.maximum).find(Boolean));
    if (maxSteps) $("#steps").max = String(maxSteps);
  } catch (_) {
    // The form still works: the API checks every value and the page shows its message.
  }
}

function choose(file) {
  if (!file) return;
  state.file = file;
  const card = $("#original");
  const media = $(".media", card);
  media.replaceChildren();
  media.classList.remove("empty");
  const url = objectUrl("original", file);
  if (VIDEO_TYPES.test(file.type)) {
    const video = document.createElement("video");
    Object.assign(video, { src: url, muted: true, loop: true, autoplay: true, playsInline: true });
    video.addEventListener("error", () => {
      media.replaceChildren(Object.assign(document.createElement("span"), { textContent: "no preview in this browser" }));
    });
    media.append(video);
  } else {
    const image = new Image();
    image.alt = `the input, ${file.name}`;
    image.src = url;
    image.addEventListener("load", () => {
      $(".meta", card).textContent = `${file.name} · ${image.naturalWidth}×${image.naturalHeight} · ${kilobytes(file.size)}`;
    });
    media.append(image);
  }
  $(".meta", card).textContent = `${file.name} · ${file.type || "unknown type"} · ${kilobytes(file.size)}`;
  for (const { name } of PIPELINES) resetCard(name, "ready");
  $("#summary").textContent = "";
  $("#status").textContent = `${file.name} chosen: press Reconstruct.`;
}

function cardOf(pipeline) {
  return $(`.card[data-pipeline="${pipeline}"]`);
}

function resetCard(pipeline, label) {
  const card = cardOf(pipeline);
  card.dataset.state = label === "running" ? "running" : "idle";
  const media = $(".media", card);
  media.replaceChildren(Object.assign(document.createElement("span"), { textContent: label }));
  media.classList.add("empty");
  $(".error", card).hidden = true;
  $(".timing", card).hidden = true;
  delete state.results[pipeline];
}

function buildCards() {
  const template = $("#card");
  for (const { name, what } of PIPELINES) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.pipeline = name;
    $("h2", card).textContent = name;
    $(".what", card).textContent = what;
    $("#results").append(card);
  }
}

// --- One run: the three pipelines one after another. ---

function query(pipeline) {
  const params = new URLSearchParams({ pipeline });
  const frames = $("#frames").value;
  const steps = $("#steps").value.trim();
  const seed = $("#seed").value.trim();
  if (frames) params.set("frames", frames);
  if (steps) params.set("steps", steps);
  if (seed) params.set("seed", seed);
  return params;
}

async function reconstruct(pipeline) {
  const card = cardOf(pipeline);
  const body = new FormData();
  body.append("file", state.file, state.file.name || "upload");
  let response;
  try {
    response = await fetch(`/reconstruct?${query(pipeline)}`, { method: "POST", body, headers: authHeaders() });
  } catch (error) {
    return showError(card, networkSentence(error));
  }
  if (!response.ok) return showError(card, await errorSentence(response));
  const blob = await response.blob();
  const image = new Image();
  image.alt = `the ${pipeline} reconstruction`;
  image.src = objectUrl(pipeline, blob);
  try {
    await image.decode();
  } catch (_) {
    return showError(card, `The reply (${blob.type || "unknown type"}) could not be shown as an image.`);
  }
  const media = $(".media", card);
  media.replaceChildren(image);
  media.classList.remove("empty");
  const traceparent = response.headers.get("traceparent");
  state.results[pipeline] = {
    timings: parseServerTiming(response.headers.get("Server-Timing")),
    frames: Number(response.headers.get("X-Frames") || 1),
    size: `${image.naturalWidth}×${image.naturalHeight}`,
    bytes: blob.size,
    traceId: traceparent ? traceparent.split("-")[1] : "",
  };
  card.dataset.state = "done";
  return true;
}

function showError(card, text) {
  card.dataset.state = "error";
  const media = $(".media", card);
  media.replaceChildren(Object.assign(document.createElement("span"), { textContent: "no reconstruction" }));
  media.classList.add("empty");
  const error = $(".error", card);
  error.textContent = text;
  error.hidden = false;
  return false;
}

// Bars on one scale across the three cards, so their lengths compare.
function drawTimings() {
  const totals = Object.values(state.results).map((r) => r.timings.gateway || 0);
  const scale = Math.max(...totals, 1);
  for (const [pipeline, result] of Object.entries(state.results)) {
    const card = cardOf(pipeline);
    const bars = $(".bars", card);
    bars.replaceChildren();
    const described = [];
    for (const stage of STAGES) {
      const value = result.timings[stage];
      if (value === undefined) continue;
      const row = document.createElement("div");
      row.className = "bar-row";
      row.dataset.stage = stage;
      const label = Object.assign(document.createElement("span"), { className: "bar-label", textContent: stage });
      const track = Object.assign(document.createElement("span"), { className: "bar-track" });
      const bar = Object.assign(document.createElement("span"), { className: "bar" });
      bar.style.width = `${(100 * value) / scale}%`;
      track.append(bar);
      const number = Object.assign(document.createElement("span"), { className: "bar-value", textContent: ms(value) });
      row.append(label, track, number);
      bars.append(row);
      described.push(`${stage} ${ms(value)}`);
    }
    const total = result.timings.gateway;
    bars.setAttribute("aria-label", `stage times: ${described.join(", ")}`);
    const parts = [total !== undefined ? `total ${ms(total)}` : "", `${result.frames} frame${result.frames === 1 ? "" : "s"}`,
      result.size, kilobytes(result.bytes)];
    $(".meta", card).textContent = parts.filter(Boolean).join(" · ");
    if (result.traceId) {
      const trace = Object.assign(document.createElement("span"), { className: "trace", textContent: "trace " });
      trace.append(Object.assign(document.createElement("code"), { textContent: result.traceId }));
      $(".meta", card).append(trace);
    }
    $(".timing", card).hidden = false;
  }
}

function summarize() {
  const total = (name) => state.results[name] && state.results[name].timings.gateway;
  const vlm = total("vlm");
  const parts = PIPELINES.filter(({ name }) => total(name) !== undefined).map(({ name }) => {
    const value = total(name);
    const versus = name !== "vlm" && vlm ? ` (${value >= vlm ? "+" : "−"}${Math.abs((100 * (value - vlm)) / vlm).toFixed(0)}% vs vlm)` : "";
    return `${name} ${ms(value)}${versus}`;
  });
  $("#summary").textContent = parts.length
    ? `This run, one request each: ${parts.join(", ")}. One request is noisy; the verdict above compares service times over many.`
    : "";
}

async function run(event) {
  event.preventDefault();
  if (state.running) return;
  if (!state.file) {
    $("#status").textContent = "Choose an image or a clip first.";
    return;
  }
  state.running = true;
  $("#run").disabled = true;
  document.body.dataset.state = "running";
  try {
    for (const { name } of PIPELINES) resetCard(name, "queued");
    // Each run starts with the next pipeline (as the paired benchmark alternates), so none always goes first.
    const start = state.runs % PIPELINES.length;
    const order = [...PIPELINES.slice(start), ...PIPELINES.slice(0, start)];
    state.runs += 1;
    let done = 0;
    for (const [index, { name }] of order.entries()) {
      $("#status").textContent = `Running ${name} (${index + 1} of ${PIPELINES.length})…`;
      resetCard(name, "running");
      if (await reconstruct(name)) done += 1;
      drawTimings();
    }
    summarize();
    $("#status").textContent = done === PIPELINES.length ? "Done." : `Done: ${done} of ${PIPELINES.length} answered.`;
  } finally {
    state.running = false;
    $("#run").disabled = false;
    document.body.dataset.state = "idle";
    refreshVerdict();
  }
}

// --- The live E-P2.6 verdict. ---

function percent(ratio) {
  if (ratio === null || ratio === undefined) return "—";
  const value = 100 * ratio;
  return `${value >= 0 ? "+" : "−"}${Math.abs(value).toFixed(1)}%`;
}

async function refreshVerdict() {
  clearTimeout(state.verdictTimer);
  const panel = $("#verdict");
  const badge = $(".badge", panel);
  const note = $(".note", panel);
  try {
    const response = await fetch("/v1/overhead", { headers: authHeaders() });
    if (!response.ok) {
      badge.dataset.verdict = "unknown";
      badge.textContent = "unavailable";
      note.textContent = await errorSentence(response);
      $(".scopes", panel).replaceChildren();
      return;
    }
    const report = await response.json();
    badge.dataset.verdict = report.verdict;
    badge.textContent = `${VERDICTS[report.verdict] || report.verdict} (budget ${Math.round(100 * report.budget)}%)`;
    const scopes = $(".scopes", panel);
    scopes.replaceChildren();
    const names = { end_to_end: "end to end", encode: "encode" };
    for (const [scope, estimate] of Object.entries(report.overhead || {})) {
      const term = Object.assign(document.createElement("dt"), { textContent: names[scope] || scope });
      const [low, high] = estimate.ci95 || [];
      const interval = low !== null && low !== undefined ? ` [95% CI ${percent(low)} … ${percent(high)}]` : "";
      const text = `${percent(estimate.ratio)}${interval} · ${VERDICTS[estimate.verdict] || estimate.verdict}`;
      const detail = Object.assign(document.createElement("dd"), { textContent: text });
      scopes.append(term, detail);
    }
    const reasons = Object.values(report.overhead || {}).flatMap((s) => s.reasons || []);
    const when = new Date().toLocaleTimeString();
    note.textContent = reasons.length && report.verdict === "insufficient_samples"
      ? `Waiting for samples: ${reasons[0].replace(/\.$/, "")}. Updated ${when}.`
      : `hybrid over vlm service times (${report.estimator}), ${report.profile} profile on ${report.device}. Updated ${when}.`;
  } catch (error) {
    badge.dataset.verdict = "unknown";
    badge.textContent = "unavailable";
    note.textContent = networkSentence(error);
  } finally {
    state.verdictTimer = setTimeout(refreshVerdict, VERDICT_REFRESH_MS);
  }
}

// --- Wiring. ---

function wire() {
  const drop = $("#drop");
  const input = $("#file");
  drop.addEventListener("click", (event) => {
    if (event.target !== input) input.click();
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => choose(input.files[0]));
  $("#controls").addEventListener("submit", run);
  $("#token").addEventListener("change", refreshVerdict);
}

buildCards();
wire();
loadBounds();
refreshVerdict();
