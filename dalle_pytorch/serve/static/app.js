// The page of `python -m dalle_pytorch.serve`: posts to /v1/images/stream and renders its
// server-sent events (queued, started, progress, preview, done, error). Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form"), grid = $("grid"), errorBox = $("error"), statusBox = $("status-box");
const progress = $("progress"), statusText = $("status"), generateButton = $("generate"), cancelButton = $("cancel");
// what the page rendered, in order, and the progress and queue places it showed (read by the
// browser tests; handy in the console too)
window.dalleLog = [];
window.dalleProgress = [];
window.dalleQueue = [];
let controller = null;
let fmapSize = null;  // the trained code grid's side, from /v1/config (a canvas is a multiple of it)

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = false;
  window.dalleLog.push("error");
}

function number(id, integer) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = integer ? Number.parseInt(raw, 10) : Number(raw);
  return Number.isNaN(value) ? raw : value;  // a non-number goes to the server, which says what is wrong
}

function requestBody() {
  const body = { prompt: $("prompt").value };
  for (const [id, integer] of [["n", true], ["seed", true], ["cond_scale", false], ["top_k", false],
                               ["top_p", false], ["temperature", false], ["batch_size", true]]) {
    const value = number(id, integer);
    if (value !== null) body[id] = value;
  }
  const negative = $("negative_prompt").value;
  if (negative.trim() !== "") body.negative_prompt = negative;
  if ($("canvas").value !== "" && fmapSize !== null) {  // "AxB": A times the grid's height, B times its width
    body.canvas = $("canvas").value.split("x").map((k) => Number(k) * fmapSize);
  }
  return body;
}

function slots(n) {
  grid.replaceChildren();
  for (let i = 0; i < n; i++) {
    const figure = document.createElement("figure");
    const slot = document.createElement("div");
    slot.className = "slot";
    const caption = document.createElement("figcaption");
    caption.textContent = "waiting";
    figure.append(slot, caption);
    grid.append(figure);
  }
}

function showPreview(data) {
  data.images.forEach((png, i) => {
    const figure = grid.children[data.first_image + i];
    if (!figure) return;
    figure.className = "preview";
    let img = figure.querySelector("img");
    if (!img) {
      img = document.createElement("img");
      img.alt = "preview";
      figure.firstChild.replaceChildren(img);
    }
    img.src = "data:image/png;base64," + png;
    figure.querySelector("figcaption").textContent = `${Math.round(100 * data.filled / data.total)} % of the codes`;
  });
  window.dalleLog.push("preview");
}

function showImages(answer) {
  grid.replaceChildren();
  answer.images.forEach((image, i) => {
    const figure = document.createElement("figure");
    figure.className = "final";
    const link = document.createElement("a");
    link.href = "data:image/png;base64," + image.png;
    link.download = `${String(i).padStart(3, "0")}_seed${image.seed}.png`;
    link.title = "download the PNG";
    const img = document.createElement("img");
    img.alt = `${answer.prompt} (seed ${image.seed})`;
    img.src = link.href;
    link.append(img);
    const caption = document.createElement("figcaption");
    caption.textContent = `seed ${image.seed}`;
    // variations: this image's codes posted back (the server keeps them, no re-encoding)
    const vary = document.createElement("button");
    vary.type = "button";
    vary.className = "vary";
    vary.textContent = "variations";
    vary.title = "sample variations of this image (the strength below: the share of its codes resampled)";
    vary.addEventListener("click", () => variationsOf(image.codes));
    if (answer.settings.canvas) {  // variations vary an image of the trained size
      vary.disabled = true;
      vary.title = "variations work on images of the trained size, not on a canvas";
    }
    figure.append(link, caption, vary);
    grid.append(figure);
  });
  $("reproduce").textContent = answer.reproduce;
  $("reproduce-box").hidden = false;
  const t = answer.timings;
  statusText.textContent = `${answer.images.length} images in ${t.total_s.toFixed(2)} s ` +
    `(waited ${t.queued_s.toFixed(2)} s in the queue)`;
  progress.value = progress.max;
  window.dalleLog.push("done");
}

function handle(kind, data) {
  if (kind === "queued") {
    statusText.textContent = `Waiting: place ${data.position} in the queue`;
    window.dalleLog.push("queued");
    window.dalleQueue.push(data.position);
  } else if (kind === "started") {
    statusText.textContent = "Sampling…";
    window.dalleLog.push("started");
  } else if (kind === "progress") {
    progress.max = data.total;
    progress.value = data.done;
    statusText.textContent = `Sampling: ${data.done} of ${data.total} codes`;
    window.dalleLog.push("progress");
    window.dalleProgress.push(data.done / data.total);
  } else if (kind === "preview") {
    showPreview(data);
  } else if (kind === "done") {
    showImages(data);
  } else if (kind === "error") {
    showError(`Error ${data.status}: ${data.detail}`);
  }
}

async function readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) handle(kind, JSON.parse(data));
    }
  }
}

async function errorText(response) {
  let detail = response.statusText;
  try {
    detail = (await response.json()).detail || detail;
  } catch (e) { /* not JSON */ }
  if (response.status === 429) {
    const retry = response.headers.get("Retry-After");
    return `The server is busy (429): ${detail}` + (retry ? ` Try again in ${retry} s.` : "");
  }
  return `Error ${response.status}: ${detail}`;
}

function variationsOf(codes) {
  if (controller) return;  // one request at a time, as the Generate button
  const strength = number("strength", false);
  const body = requestBody();
  body.variation_of = { codes, strength: strength === null ? 0.5 : strength, mode: $("variation_mode").value };
  delete body.canvas;
  window.dalleLog.push("variations");
  run(body);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  run(requestBody());
});

async function run(body) {
  errorBox.hidden = true;
  $("reproduce-box").hidden = true;
  controller = new AbortController();
  generateButton.disabled = true;
  cancelButton.disabled = false;
  progress.value = 0;
  statusText.textContent = "Sending…";
  statusBox.hidden = false;
  try {
    const response = await fetch("/v1/images/stream", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      statusBox.hidden = true;
      showError(await errorText(response));
      return;
    }
    slots(typeof body.n === "number" ? body.n : 4);
    await readEvents(response);
  } catch (e) {
    if (e.name === "AbortError") statusText.textContent = "Cancelled.";
    else showError(`The connection failed: ${e.message}`);
  } finally {
    generateButton.disabled = false;
    cancelButton.disabled = true;
    controller = null;
  }
}

cancelButton.addEventListener("click", () => controller && controller.abort());

// the server's limits and defaults
fetch("/v1/config").then((r) => r.json()).then((config) => {
  $("n").max = config.max_images;
  fmapSize = config.fmap_size;
  for (const option of $("canvas").options) {  // the canvases this server allows
    const [a, b] = option.value === "" ? [1, 1] : option.value.split("x").map(Number);
    option.disabled = a * b * config.fmap_size ** 2 > Math.max(config.max_canvas_codes, config.image_seq_len);
  }
  document.title = `dalle_pytorch: ${config.dalle_path}`;
}).catch(() => {});
