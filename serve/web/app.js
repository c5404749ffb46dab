// The label-query page: each image goes to POST /predict on its own (one bad file fails only its
// card), and /model is fetched again after every answer, so a reloaded model shows up at once.
"use strict";

const TOP_K = 3;
const PARALLEL = 3; // requests in flight at once; the server batches them

const $ = (id) => document.getElementById(id);
const waiting = [];
let running = 0;
let pending = 0;
let modelSeen = "";
let modelAsked = 0;
let modelShown = 0;
let modelRetry = 0; // timer: look again while the server has no model yet

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function percent(score) {
  return `${(score * 100).toFixed(1)}%`;
}

// --- the model panel ---------------------------------------------------------------------------

async function refreshModel() {
  const asked = ++modelAsked;
  let model;
  try {
    const response = await fetch("/model", { cache: "no-store" });
    if (response.status === 503 && !modelSeen) return waitForModel(response);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    model = await response.json();
  } catch (error) {
    if (!modelSeen) $("model-status").textContent = `Could not load the model's description (${error.message}).`;
    return;
  }
  const key = JSON.stringify(model);
  if (asked < modelShown || key === modelSeen) return; // an older answer, or nothing new
  modelShown = asked;
  const changed = modelSeen !== "";
  modelSeen = key;
  showModel(model, changed);
}

// serve --wait_for_model started before the first export: say so, and look again when told to.
function waitForModel(response) {
  $("model-status").textContent = "No model is loaded yet: the server is waiting for one to be trained.";
  clearTimeout(modelRetry);
  modelRetry = setTimeout(refreshModel, 1000 * (Number(response.headers.get("Retry-After")) || 5));
}

function showModel(model, changed) {
  $("model-status").textContent = changed ? `The server now serves a new model (export ${model.export}).` : "";
  $("model-status").hidden = !changed;
  $("backbone").textContent = model.backbone;
  $("trained").replaceChildren(trainedAt(model.created));
  $("accuracy").textContent =
    model.test_accuracy === null
      ? model.estimate || "not measured"
      : `${percent(model.test_accuracy)}` + (model.test_count ? ` of ${model.test_count} test images` : "");
  $("export").textContent = model.export;
  $("model-facts").hidden = false;
  $("labels-title").hidden = false;
  $("labels-title").textContent = `${model.labels.length} labels`;
  $("labels").replaceChildren(...model.labels.map((label) => element("li", {}, label)));
  const heading = model.plots.length ? [element("h3", {}, "Report")] : [];
  $("plots").replaceChildren(
    ...heading,
    ...model.plots.map((plot) => {
      const figure = element("figure");
      const link = element("a", { href: plot.url });
      link.append(element("img", { src: plot.url, alt: plot.title, loading: "lazy" }));
      figure.append(link, element("figcaption", {}, plot.title));
      return figure;
    }),
  );
}

function trainedAt(created) {
  if (!created) return document.createTextNode("unknown");
  // model.json holds UTC, e.g. 2026-11-22T00:19:12Z; shown as 2026-11-22 00:19 UTC
  return element("time", { datetime: created }, `${created.slice(0, 10)} ${created.slice(11, 16)} UTC`);
}

// --- queries -----------------------------------------------------------------------------------

function addImages(files) {
  const images = Array.from(files);
  if (!images.length) return;
  const cards = images.map(card);
  $("results").prepend(...cards);
  $("results-bar").hidden = false;
  images.forEach((file, index) => waiting.push([file, cards[index]]));
  pending += images.length;
  showProgress();
  while (running < PARALLEL && waiting.length) next();
}

function card(file) {
  const item = element("li", { class: "card", "data-state": "pending", "data-filename": file.name });
  const url = URL.createObjectURL(file);
  const thumb = element("img", { class: "thumb", src: url, alt: `Your image ${file.name}` });
  thumb.addEventListener("load", () => {
    if (thumb.naturalWidth < 96) thumb.classList.add("pixelated"); // tiny images: crisp pixels, not blur
  });
  thumb.addEventListener("error", () => {
    const none = element("div", { class: "thumb none", role: "img", "aria-label": `No preview of ${file.name}` });
    none.textContent = "no preview";
    thumb.replaceWith(none);
  });
  const body = element("div", { class: "card-body" });
  body.append(element("h3", { class: "filename" }, file.name), element("p", { class: "status" }, "Asking the model…"));
  item.append(thumb, body);
  item.dataset.url = url;
  return item;
}

async function next() {
  const [file, item] = waiting.shift();
  running += 1;
  try {
    await ask(file, item);
  } finally {
    running -= 1;
    pending -= 1;
    showProgress();
    if (waiting.length) next();
    refreshModel();
  }
}

async function ask(file, item) {
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  let answer = null;
  try {
    response = await fetch(`/predict?top_k=${TOP_K}`, { method: "POST", body: form });
  } catch {
    return showError(item, "Could not reach the server. Is it still running?");
  }
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (!response.ok || !answer || !answer.predictions) {
    const detail = answer && typeof answer.error === "string" ? answer.error : "";
    return showError(item, ...explain(response.status, detail.replace(`${file.name}: `, "")));
  }
  showRanks(item, answer.predictions);
}

// Plain words first; the server's own reason second, where it helps.
function explain(status, detail) {
  if (status === 415) return ["Not an image this server can read.", detail];
  if (status === 503) return ["No model is loaded yet. Try again once one has been trained.", detail];
  if (status === 413) return ["Too large for this server. Try a smaller image.", detail];
  if (status === 400) return [detail ? `The server could not use this image: ${detail}.` : "The server could not use this image.", ""];
  if (status >= 500) return [`The server failed on this image (HTTP ${status}). Try again later.`, detail];
  return [`The server refused this image (HTTP ${status}).`, detail];
}

function showError(item, message, detail = "") {
  item.dataset.state = "error";
  const status = item.querySelector(".status");
  status.className = "status error";
  status.setAttribute("role", "alert");
  status.textContent = message;
  if (detail) item.querySelector(".card-body").append(element("p", { class: "detail" }, detail));
}

function showRanks(item, predictions) {
  item.dataset.state = "done";
  const name = item.dataset.filename;
  const list = element("ol", { class: "ranks", "aria-label": `Labels for ${name}, most likely first` });
  for (const { label, score } of predictions) {
    const row = element("li", { "data-label": label });
    const bar = element("div", {
      class: "bar",
      role: "meter",
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": (score * 100).toFixed(1),
      "aria-valuetext": percent(score),
    });
    bar.append(element("span", { style: `width: ${percent(score)}` }));
    row.append(element("span", { class: "label" }, label), bar, element("span", { class: "score" }, percent(score)));
    list.append(row);
  }
  const status = item.querySelector(".status");
  status.textContent = `Most likely: ${predictions[0].label}`;
  status.after(list);
}

function imageCount(count) {
  return count === 1 ? "1 image" : `${count} images`;
}

function showProgress() {
  const done = $("results").children.length - pending;
  $("progress").textContent = pending ? `Asking about ${imageCount(pending)}…` : `${imageCount(done)} answered.`;
}

// --- wiring ------------------------------------------------------------------------------------

$("files").addEventListener("change", (event) => {
  addImages(event.target.files);
  event.target.value = ""; // the same file can be chosen again
});

$("clear").addEventListener("click", () => {
  for (const item of $("results").querySelectorAll(".card:not([data-state=pending])")) {
    URL.revokeObjectURL(item.dataset.url);
    item.remove();
  }
  $("results-bar").hidden = pending === 0;
  showProgress();
});

// Drops anywhere on the page count; the drop zone lights up while files are dragged over the page.
let dragDepth = 0;
const carriesFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  $("dropzone").classList.add("over");
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) $("dropzone").classList.remove("over");
});
window.addEventListener("dragover", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
window.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault(); // else the browser leaves the page to show the file
  dragDepth = 0;
  $("dropzone").classList.remove("over");
  addImages(event.dataTransfer.files);
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshModel();
});
refreshModel();
