// The label-query page. A model and version are chosen in the picker; each image then goes to
// POST /predict?model=..&version=.. on its own (one bad file fails only its card). The picker's
// lists (/models) and the chosen version's card (/model) are fetched again after every answer and
// whenever the picker is opened, so a newly loaded model or version shows up without reloading.
// Model names and labels are strangers' strings: they reach the page through textContent only.
"use strict";

const TOP_K = 3;
const PARALLEL = 3; // requests in flight at once; the server batches them
const DEFAULT = ""; // the version choice that names none: the server answers with its highest available
const AVAILABLE = "AVAILABLE";

const $ = (id) => document.getElementById(id);
const waiting = []; // [file, card, target] not sent yet
let running = 0;
let pending = 0;

const choice = { model: "", version: DEFAULT }; // what the next images are asked of
let pickerKey = ""; // what the two lists show, so they are rebuilt only when it changes
let served = []; // the last /models answer
let shown = null; // the card on show: { key, asked, version }
let retryTimer = 0; // look again while the chosen model has no version loaded yet
let refreshing = null; // the refresh under way, a promise
let refreshAgain = false; // asked for again while one was under way

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function percent(score) {
  return `${(score * 100).toFixed(1)}%`;
}

function say(id, text) {
  $(id).textContent = text;
  $(id).hidden = !text;
}

function query(target) {
  const params = new URLSearchParams();
  if (target.model) params.set("model", target.model);
  if (target.version !== DEFAULT) params.set("version", target.version);
  return params;
}

// --- the picker and the chosen version's card ------------------------------------------------------

// One refresh at a time; a call during one makes it run once more, and resolves when that is done.
function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  for (const id of ["picker", "model"]) $(id).setAttribute("aria-busy", "true");
  refreshing = (async () => {
    let spare = 1; // one more pass when the chosen version vanished between /models and /model
    for (;;) {
      refreshAgain = false;
      const vanished = await refreshOnce();
      if (refreshAgain || (vanished && spare-- > 0)) continue;
      break;
    }
  })().finally(() => {
    refreshing = null;
    for (const id of ["picker", "model"]) $(id).setAttribute("aria-busy", "false");
  });
  return refreshing;
}

async function refreshOnce() {
  let list;
  try {
    const response = await fetch("/models", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    list = (await response.json()).models;
    if (!Array.isArray(list)) throw new Error("no list of models");
  } catch (error) {
    if (!shown) say("model-status", `Could not load the list of models (${error.message}).`);
    return false;
  }
  served = list;
  fallBack(list);
  showPicker(list);
  return showChosen();
}

// A chosen model or version that is no longer served: say so, and take the default instead.
function fallBack(list) {
  const names = list.map((model) => model.name);
  const answering = list.find((model) => model.versions.some((each) => each.state === AVAILABLE));
  const first = answering ? answering.name : names[0] || ""; // the first by name that can answer
  if (choice.model && !names.includes(choice.model)) {
    const instead = first ? `; showing ${first} instead` : "";
    $("picker-status").textContent = `The model ${choice.model} is no longer served${instead}.`;
    choice.model = first;
    choice.version = DEFAULT;
  } else if (!choice.model) {
    choice.model = first;
  }
  if (choice.version === DEFAULT) return;
  const model = list.find((each) => each.name === choice.model);
  const version = model && model.versions.find((each) => String(each.version) === choice.version);
  if (!version || version.state !== AVAILABLE) {
    $("picker-status").textContent =
      `Version ${choice.version} of ${choice.model} is no longer served; images now go to its default version.`;
    choice.version = DEFAULT;
  }
}

function showPicker(list) {
  const key = JSON.stringify([list, choice]);
  if (key === pickerKey) return;
  pickerKey = key;
  const models = $("model-choice");
  const names = list.map((model) => new Option(model.name, model.name));
  models.replaceChildren(...(names.length ? names : [new Option("None loaded yet", "")]));
  models.value = choice.model;
  models.disabled = !names.length;

  const model = list.find((each) => each.name === choice.model);
  const versions = model ? model.versions : [];
  const newest = versions.find((each) => each.state === AVAILABLE);
  const fallback = newest ? `Default: newest available (${newest.version})` : "Default: none available yet";
  const options = [new Option(fallback, DEFAULT)];
  for (const version of versions) {
    const available = version.state === AVAILABLE;
    const text = available ? String(version.version) : `${version.version} (${stateText(version)})`;
    const option = new Option(text, String(version.version));
    option.disabled = !available;
    if (version.error) option.title = version.error;
    options.push(option);
  }
  $("version-choice").replaceChildren(...options);
  $("version-choice").value = choice.version;
  $("version-choice").disabled = !model;
}

function stateText({ state, error }) {
  if (state === "LOADING") return "loading";
  if (state === "UNLOADING") return "unloading";
  if (error) return "refused"; // the reason is the option's title: it names files, too long for a list
  return "no longer served";
}

// The chosen version's card; true when it vanished since /models listed it (worth one more pass).
async function showChosen() {
  const asked = JSON.stringify(choice);
  let response;
  let card = null;
  try {
    response = await fetch(`/model?${query(choice)}`, { cache: "no-store" });
    card = await response.json().catch(() => null);
  } catch (error) {
    if (!shown) say("model-status", `Could not load the model's description (${error.message}).`);
    return false;
  }
  if (asked !== JSON.stringify(choice)) return false; // chosen again meanwhile: the next pass shows it
  if (response.status === 503) return waitForModel(response);
  if (response.status === 404) return true;
  if (!response.ok || !card || !Array.isArray(card.labels)) {
    if (!shown) say("model-status", `Could not load the model's description (HTTP ${response.status}).`);
    return false;
  }
  clearTimeout(retryTimer);
  const key = JSON.stringify(card);
  if (shown && shown.key === key) {
    shown.asked = asked; // chosen by number now, or by default: the same version all the same
    return false;
  }
  const before = shown && shown.asked === asked ? shown : null; // the same choice, a new answer: the server changed
  shown = { key, asked, version: card.version };
  showCard(card, before);
  return false;
}

// No version of the chosen model is loaded yet (or no model at all): say so, and look again when told to.
function waitForModel(response) {
  say(
    "model-status",
    served.length
      ? `No version of ${choice.model} is loaded yet: the server is loading one or waiting for one.`
      : "No model is loaded yet: the server is waiting for one to be trained.",
  );
  shown = null;
  $("model-facts").hidden = true;
  $("labels-title").hidden = true;
  $("labels").replaceChildren();
  $("plots").replaceChildren();
  clearTimeout(retryTimer);
  retryTimer = setTimeout(refresh, 1000 * (Number(response.headers.get("Retry-After")) || 5));
  return false;
}

function showCard(card, before) {
  const which = `version ${card.version} of ${card.name} (export ${card.export})`;
  if (!before) say("model-status", "");
  else if (before.version === card.version) say("model-status", `The server reloaded ${which}.`);
  else say("model-status", `The server now answers with ${which}; it was version ${before.version}.`);
  $("model-name").textContent = card.name;
  $("model-version").textContent = String(card.version);
  $("backbone").textContent = card.backbone;
  $("trained").replaceChildren(trainedAt(card.created));
  $("accuracy").textContent =
    card.test_accuracy === null
      ? card.estimate || "not measured"
      : `${percent(card.test_accuracy)}` + (card.test_count ? ` of ${card.test_count} test images` : "");
  $("export").textContent = card.export;
  $("model-facts").hidden = false;
  $("labels-title").hidden = false;
  $("labels-title").textContent = `${card.labels.length} labels`;
  $("labels").replaceChildren(...card.labels.map((label) => element("li", {}, label)));
  const heading = card.plots.length ? [element("h3", {}, "Report")] : [];
  $("plots").replaceChildren(
    ...heading,
    ...card.plots.map((plot) => {
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
  const target = { ...choice, here: runsHere() }; // images go to what was chosen when they were added
  images.forEach((file, index) => waiting.push([file, cards[index], target]));
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
  const [file, item, target] = waiting.shift();
  running += 1;
  try {
    await (target.here ? classifyHere(file, item, target) : ask(file, item, target)); // device.js, or the server
  } finally {
    running -= 1;
    pending -= 1;
    showProgress();
    if (waiting.length) next();
    refresh();
  }
}

// `gone`: the version asked for first, when it was no longer served and the default answers instead.
async function ask(file, item, target, gone = "") {
  const form = new FormData();
  form.append("file", file, file.name);
  const params = query(target);
  params.set("top_k", TOP_K);
  let response;
  let answer = null;
  try {
    response = await fetch(`/predict?${params}`, { method: "POST", body: form });
  } catch {
    return showError(item, "Could not reach the server. Is it still running?");
  }
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (response.status === 404 && target.version !== DEFAULT && !gone) {
    await refresh(); // the picker says the version is gone and takes the default
    return ask(file, item, { model: target.model, version: DEFAULT }, target.version);
  }
  if (!response.ok || !answer || !Array.isArray(answer.predictions)) {
    const detail = answer && typeof answer.error === "string" ? answer.error : "";
    return showError(item, ...explain(response.status, detail.replace(`${file.name}: `, "")));
  }
  showRanks(item, answer.predictions, answer.model_spec, gone);
}

// Plain words first; the server's own reason second, where it helps.
function explain(status, detail) {
  if (status === 415) return ["Not an image this server can read.", detail];
  if (status === 503) return ["No model is loaded yet. Try again once one has been trained.", detail];
  if (status === 413) return ["Too large for this server. Try a smaller image.", detail];
  if (status === 404) return ["The model asked for is no longer served. Choose another.", detail];
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

// `here`: classified in this browser (device.js), not by the server.
function showRanks(item, predictions, spec, gone, here = false) {
  item.dataset.state = "done";
  item.dataset.answeredIn = here ? "browser" : "server";
  const name = item.dataset.filename;
  const list = element("ol", { class: "ranks", "aria-label": `Labels for ${name}, most likely first` });
  for (const { label, score } of predictions) {
    const row = element("li", { "data-label": label, "data-score": String(score) });
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
  status.textContent = predictions.length ? `Most likely: ${predictions[0].label}` : "No labels.";
  status.after(list);
  if (spec && typeof spec.name === "string") {
    item.dataset.model = spec.name;
    item.dataset.version = String(spec.version);
    const note = gone ? ` (version ${gone} was no longer served)` : "";
    const where = here ? "in this browser " : "";
    list.after(element("p", { class: "answered-by" }, `Answered ${where}by ${spec.name}, version ${spec.version}${note}`));
  }
}

function imageCount(count) {
  return count === 1 ? "1 image" : `${count} images`;
}

function showProgress() {
  const done = $("results").children.length - pending;
  $("progress").textContent = pending ? `Asking about ${imageCount(pending)}…` : `${imageCount(done)} answered.`;
}

// --- views: Predict and Train -------------------------------------------------------------------

const VIEWS = ["predict", "train"];
let view = "predict";

// The tabs follow WAI-ARIA's tabs pattern: the chosen tab is the one in the Tab order; arrows move between them.
function showView(name, focus = false) {
  view = name;
  for (const each of VIEWS) {
    const tab = $(`tab-${each}`);
    tab.setAttribute("aria-selected", String(each === name));
    tab.tabIndex = each === name ? 0 : -1;
    $(`view-${each}`).hidden = each !== name;
  }
  if (focus) $(`tab-${name}`).focus();
  history.replaceState(null, "", name === "train" ? "#train" : location.pathname + location.search);
  if (name === "train") openTraining(); // train.js
  else closeCamera();
}

// --- wiring ------------------------------------------------------------------------------------

$("model-choice").addEventListener("change", (event) => {
  choice.model = event.target.value;
  choice.version = DEFAULT;
  $("picker-status").textContent = "";
  refresh();
});

$("version-choice").addEventListener("change", (event) => {
  choice.version = event.target.value;
  $("picker-status").textContent = "";
  refresh();
});

// Opening the picker asks for the lists again, so what was loaded since is there to choose.
for (const id of ["model-choice", "version-choice"]) {
  $(id).addEventListener("focus", refresh);
  $(id).addEventListener("pointerdown", refresh);
}

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

// Drops anywhere on the page count: in Predict they are asked about (the drop zone lights up while
// files are dragged over the page); in Train they go to the class they are dropped on (train.js).
let dragDepth = 0;
const carriesFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  if (view === "predict") $("dropzone").classList.add("over");
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth) return;
  $("dropzone").classList.remove("over");
  dragOverClasses(null);
});
window.addEventListener("dragover", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  if (view === "train") dragOverClasses(event);
});
window.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault(); // else the browser leaves the page to show the file
  dragDepth = 0;
  $("dropzone").classList.remove("over");
  if (view === "train") dropOnClasses(event);
  else addImages(event.dataTransfer.files);
});

for (const name of VIEWS) $(`tab-${name}`).addEventListener("click", () => showView(name));
$("tab-predict").parentElement.addEventListener("keydown", (event) => {
  const index = VIEWS.indexOf(view);
  const to = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: VIEWS.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  showView(VIEWS[(to + VIEWS.length) % VIEWS.length], true);
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
refresh();
