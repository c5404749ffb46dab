// The Train view: a model name, classes with images (files, drops, or photos from the camera), and
// a job on the server's job API, followed to its end; then "Try it" shows the new version in Predict.
// It shares app.js's globals (both are classic scripts): $, element, say, percent, imageCount,
// choice, served, refresh. Class names and everything the server says reach the page through
// textContent only.
"use strict";

// --- training: the token ------------------------------------------------------------------------

// The admin token lives in this tab's sessionStorage only (gone with the tab; never in a URL): it is
// asked for once, sent as `Authorization: Bearer`, and forgotten when the server refuses it.
const TOKEN_KEY = "retrain-serve.admin-token";
const JOB_KEY = "retrain-serve.job"; // the job this tab started, followed again after a reload
const FINISHED = ["succeeded", "failed", "cancelled"];
const DEFAULT_STEPS = 4000; // the server's how_many_training_steps when a job names none
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/; // the server's rule (serve.models.MODEL_NAME)
const RESERVED = "latest"; // retrain's link to its newest export
const EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"]; // what retrain reads
const TYPE_EXTENSIONS = {
  "image/jpeg": ".jpg",
  "image/png": ".png",
  "image/gif": ".gif",
  "image/bmp": ".bmp",
  "image/webp": ".webp",
};
const THUMBS_SHOWN = 48; // per class; the count says how many more there are
const PHOTO_SIDE = 1280; // photos are scaled down to at most this many pixels on their longer side
const SERVED_WITHIN = 180_000; // ms for a trained version to be loaded before the page stops waiting

let token = session(TOKEN_KEY);
let jobsState = "unknown"; // unknown, checking, off, token, ready, unreachable
let job = null; // the job on show: { id, model, steps, version, finished }

function session(key, value) {
  try {
    if (value === undefined) return sessionStorage.getItem(key) || "";
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch {
    // storage refused (a private window's settings): the token then lives as long as the page
  }
  return "";
}

function keepToken(value) {
  token = value;
  session(TOKEN_KEY, value || null);
}

function busy(id, on) {
  $(id).setAttribute("aria-busy", String(on));
}

// A job API call with the token; the caller looks at 401/403 (`refused`).
function jobFetch(path, init = {}, using = token) {
  const headers = new Headers(init.headers);
  if (using) headers.set("authorization", `Bearer ${using}`);
  return fetch(path, { ...init, headers, cache: "no-store" });
}

const refused = (response) => response.status === 401 || response.status === 403;

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: the status says enough
  }
  return `HTTP ${response.status}`;
}

function openTraining() {
  fillKnownModels();
  if (["unknown", "unreachable"].includes(jobsState)) checkJobs();
}

// Whether the server trains (404: the job API is off) and whether the token kept is still good.
async function checkJobs() {
  jobsState = "checking";
  busy("train", true);
  say("train-status", "Asking the server whether it can train…");
  try {
    const response = await jobFetch("/v1/jobs");
    if (response.status === 404) showOff(await errorOf(response));
    else if (refused(response)) await askToken(response);
    else if (response.ok) showReady(await response.json());
    else {
      jobsState = "unreachable";
      say("train-status", `The server could not list its jobs (${await errorOf(response)}).`);
    }
  } catch {
    jobsState = "unreachable";
    say("train-status", "Could not reach the server. Is it still running? Open this tab again to retry.");
  } finally {
    busy("train", false);
  }
}

function showOff(reason) {
  jobsState = "off";
  $("token-form").hidden = true;
  $("train-fields").hidden = true;
  say(
    "train-status",
    `Training is off on this server (it says: ${reason}). To turn it on, start serve with --models_dir DIR ` +
      "--admin_token_file FILE, where FILE holds a secret token of at least 16 characters; then enter that token here.",
  );
}

// The server refused the token (or none was sent): forget it and ask for it.
async function askToken(response) {
  const reason = response ? await errorOf(response) : "";
  const had = Boolean(token);
  keepToken("");
  jobsState = "token";
  say("train-status", "");
  $("train-fields").hidden = true;
  $("token-form").hidden = false;
  let message = "";
  if (response && response.status === 403) message = `The server refused the admin token (${reason}). Enter it again.`;
  else if (had) message = "The server asks for the admin token again.";
  $("token-error").textContent = message;
  if (view === "train") $("token").focus();
}

function showReady(listed) {
  jobsState = "ready";
  say("train-status", "");
  $("token-form").hidden = true;
  $("train-fields").hidden = false;
  fillKnownModels();
  if (job) return;
  const mine = session(JOB_KEY); // a job this tab started before a reload: follow it again
  const found = listed && Array.isArray(listed.jobs) ? listed.jobs.find((each) => each.job === mine) : null;
  if (found && !FINISHED.includes(found.state)) {
    job = { id: found.job, model: found.model, steps: stepsOf(found), version: null, finished: false };
    startJobPanel(job, "Following the job this tab started…");
    follow(job);
  }
}

function fillKnownModels() {
  $("known-models").replaceChildren(...served.map((model) => new Option(model.name)));
}

async function useToken(event) {
  event.preventDefault();
  const entered = $("token").value.trim();
  if (!entered) return;
  busy("train", true);
  try {
    const response = await jobFetch("/v1/jobs", {}, entered);
    if (response.ok) {
      keepToken(entered);
      $("token").value = "";
      $("token-error").textContent = "";
      showReady(await response.json());
      if (job && !job.finished && job.id) follow(job); // it stopped when the token was refused
    } else if (response.status === 404) {
      showOff(await errorOf(response));
    } else if (response.status === 403) {
      $("token-error").textContent = "That is not the admin token: it is the text in the server's --admin_token_file.";
    } else {
      $("token-error").textContent = `The server could not check the token (${await errorOf(response)}).`;
    }
  } catch {
    $("token-error").textContent = "Could not reach the server. Is it still running?";
  } finally {
    busy("train", false);
  }
}

// --- training: classes and their images ----------------------------------------------------------

const classes = []; // { id, label, images: [{ file, url }], card }
let classCount = 0;
let photoCount = 0;

function modelProblem(name) {
  if (!name) return "Give the model a name.";
  if (name === RESERVED) return `The name "${RESERVED}" is reserved: choose another.`;
  if (!MODEL_NAME.test(name)) {
    return "A model name is letters, digits, -, _ and . (none of those three first), at most 128 characters.";
  }
  return "";
}

// A class name is a folder name on the server, and a label written one a line.
function classProblem(label) {
  if (!label) return "Give the class a name.";
  if (/[/\\:]/.test(label)) return "A class name cannot hold /, \\ or :.";
  if (label.startsWith(".")) return "A class name cannot start with a dot.";
  if ([...label].some((c) => c !== " " && /[\p{C}\p{Z}]/u.test(c))) {
    return "A class name cannot hold control characters, line breaks or invisible characters.";
  }
  if (classes.some((each) => each.label === label)) return `There is a class ${label} already.`;
  return "";
}

function addClass(event) {
  event.preventDefault();
  const input = $("class-name");
  const label = input.value.trim();
  const problem = classProblem(label);
  input.setAttribute("aria-invalid", String(Boolean(problem)));
  say("train-problem", problem);
  if (problem) return;
  classCount += 1;
  const klass = { id: `class-${classCount}`, label, images: [] };
  klass.card = classCard(klass);
  classes.push(klass);
  $("classes").append(klass.card);
  showImages(klass);
  input.value = "";
}

function classCard(klass) {
  const { id, label } = klass;
  const item = element("li", { class: "class-card", id, "data-label": label, "aria-labelledby": `${id}-name` });
  const head = element("div", { class: "class-head" });
  head.append(element("h3", { class: "class-name", id: `${id}-name` }, label), element("span", { class: "count" }));
  const drop = element("div", { class: "class-drop" });
  const input = element("input", { id: `${id}-files`, type: "file", multiple: "", accept: "image/*" });
  input.addEventListener("change", () => {
    addToClass(klass, input.files);
    input.value = ""; // the same file can be chosen again
  });
  drop.append(element("label", { for: input.id }, `Images of ${label}: drop them here, or choose them`), input);
  const actions = element("div", { class: "row" });
  const photo = element("button", { type: "button", class: "take-photo", "aria-label": `Take photos of ${label}` });
  photo.textContent = "Take photos";
  photo.addEventListener("click", () => openCamera(klass));
  const remove = element("button", { type: "button", class: "remove-class", "aria-label": `Remove class ${label}` });
  remove.textContent = "Remove class";
  remove.addEventListener("click", () => removeClass(klass));
  actions.append(photo, remove);
  const note = element("p", { class: "problem class-note", role: "alert" });
  const thumbs = element("ul", { class: "class-thumbs", "aria-label": `Images of ${label}` });
  item.append(head, drop, actions, note, thumbs);
  return item;
}

function extensionOf(file) {
  const dot = file.name.lastIndexOf(".");
  const suffix = dot > 0 ? file.name.slice(dot).toLowerCase() : "";
  return EXTENSIONS.includes(suffix) ? suffix : TYPE_EXTENSIONS[file.type] || "";
}

function addToClass(klass, files) {
  const images = Array.from(files);
  const kept = images.filter(extensionOf);
  const left = images.length - kept.length;
  for (const file of kept) klass.images.push({ file, url: URL.createObjectURL(file) });
  klass.card.querySelector(".class-note").textContent = left
    ? `${left === 1 ? "1 file was" : `${left} files were`} left out: not JPEG, PNG, GIF, BMP or WebP.`
    : "";
  say("train-problem", "");
  showImages(klass);
}

function showImages(klass) {
  const { images, label, card } = klass;
  card.querySelector(".count").textContent = imageCount(images.length);
  card.dataset.count = String(images.length);
  const shown = images.slice(0, THUMBS_SHOWN).map((image) => {
    const item = element("li");
    const thumb = element("img", { src: image.url, alt: image.file.name });
    thumb.addEventListener("load", () => {
      if (thumb.naturalWidth < 96) thumb.classList.add("pixelated");
    });
    const remove = element("button", {
      type: "button",
      class: "remove-image",
      "aria-label": `Remove ${image.file.name}`,
    });
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      URL.revokeObjectURL(image.url);
      images.splice(images.indexOf(image), 1);
      showImages(klass);
    });
    item.append(thumb, remove);
    return item;
  });
  const hidden = images.length - THUMBS_SHOWN;
  const more = hidden > 0 ? [element("li", { class: "more" }, `and ${hidden} more`)] : [];
  card.querySelector(".class-thumbs").replaceChildren(...shown, ...more);
  card.querySelector(".class-thumbs").hidden = !images.length;
  card.querySelector(".class-thumbs").setAttribute("aria-label", `${imageCount(images.length)} of ${label}`);
}

function removeClass(klass) {
  if (camera.klass === klass) closeCamera();
  for (const image of klass.images) URL.revokeObjectURL(image.url);
  klass.card.remove();
  classes.splice(classes.indexOf(klass), 1);
  say("train-problem", "");
}

// --- training: the camera ------------------------------------------------------------------------

// On only while the camera panel is open: stopped by "Done", when training starts, when its class
// is removed, when the Predict view is chosen, and when the tab is hidden.
const camera = { stream: null, klass: null, asking: 0 };

async function openCamera(klass) {
  camera.klass = klass;
  $("camera-title").textContent = `Camera: photos of ${klass.label}`;
  $("camera").hidden = false;
  $("camera").scrollIntoView({ block: "nearest" });
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("camera-status").textContent =
      "This browser lets a page use the camera only over HTTPS or from this computer (localhost): " +
      "choose image files instead.";
    return;
  }
  if (camera.stream) {
    cameraReady();
    return;
  }
  const asked = ++camera.asking;
  $("capture").disabled = true;
  $("camera-status").textContent = "Starting the camera…";
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (error) {
    if (asked === camera.asking) $("camera-status").textContent = cameraProblem(error);
    return;
  }
  if (asked !== camera.asking) {
    for (const track of stream.getTracks()) track.stop(); // closed while the browser asked
    return;
  }
  camera.stream = stream;
  const video = $("camera-video");
  video.srcObject = stream;
  video.addEventListener("loadeddata", cameraReady, { once: true });
  video.play().catch(() => {});
}

function cameraReady() {
  const video = $("camera-video");
  if (!camera.stream || !camera.klass || !video.videoWidth) return;
  $("capture").disabled = false;
  $("camera-status").textContent = `The camera is on: each photo goes to ${camera.klass.label}.`;
}

function cameraProblem(error) {
  if (error.name === "NotAllowedError") {
    return "The camera was not allowed: allow it in the browser's settings for this site.";
  }
  if (error.name === "NotFoundError" || error.name === "OverconstrainedError") return "No camera was found.";
  if (error.name === "NotReadableError") return "The camera is in use by another program.";
  return `The camera did not start (${error.name || error.message}).`;
}

function closeCamera() {
  camera.asking += 1;
  if (camera.stream) for (const track of camera.stream.getTracks()) track.stop();
  camera.stream = null;
  camera.klass = null;
  const video = $("camera-video");
  video.pause();
  video.srcObject = null;
  $("capture").disabled = true;
  $("camera-status").textContent = "";
  $("camera").hidden = true;
}

async function capture() {
  const video = $("camera-video");
  const klass = camera.klass;
  if (!klass || !video.videoWidth) return;
  const scale = Math.min(1, PHOTO_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const canvas = element("canvas", {
    width: String(Math.round(video.videoWidth * scale)),
    height: String(Math.round(video.videoHeight * scale)),
  });
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  if (!blob) {
    $("camera-status").textContent = "Could not take the photo: try again.";
    return;
  }
  photoCount += 1;
  addToClass(klass, [new File([blob], `photo-${photoCount}.jpg`, { type: "image/jpeg" })]);
  $("camera-status").textContent = `Photo ${photoCount} added to ${klass.label} (${imageCount(klass.images.length)}).`;
}

// --- training: the zip ---------------------------------------------------------------------------

// A zip of stored (uncompressed) members: the images are compressed already. No ZIP64, so at most
// 65,535 members and 4 GiB; names are UTF-8 (flag bit 11).
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function dosTime(date) {
  const time = (date.getHours() << 11) | (date.getMinutes() << 5) | (date.getSeconds() >> 1);
  const day = ((Math.max(date.getFullYear(), 1980) - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate();
  return [time, day];
}

// entries: [{ name, blob }] -> a Blob of the zip
async function storedZip(entries, date = new Date()) {
  if (entries.length > 0xffff) throw new Error("more than 65,535 images in one upload");
  const encoder = new TextEncoder();
  const [time, day] = dosTime(date);
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { name, blob } of entries) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    const path = encoder.encode(name);
    const crc = crc32(bytes);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); // local file header
    local.setUint16(4, 20, true); // version needed: 2.0
    local.setUint16(6, 0x0800, true); // UTF-8 names
    local.setUint16(8, 0, true); // stored
    local.setUint16(10, time, true);
    local.setUint16(12, day, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, bytes.length, true);
    local.setUint32(22, bytes.length, true);
    local.setUint16(26, path.length, true);
    local.setUint16(28, 0, true);
    parts.push(local, path, blob);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true); // central directory header
    entry.setUint16(4, 20, true); // made by: MS-DOS (no Unix mode to check), 2.0
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(10, 0, true);
    entry.setUint16(12, time, true);
    entry.setUint16(14, day, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, bytes.length, true);
    entry.setUint32(24, bytes.length, true);
    entry.setUint16(28, path.length, true);
    // extra and comment lengths, disk number, internal and external attributes: 0
    entry.setUint32(42, offset, true);
    central.push(entry, path);
    offset += 30 + path.length + bytes.length;
    if (offset > 0xffffffff) throw new Error("more than 4 GiB of images in one upload");
  }
  const size = central.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); // end of central directory
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

// `<label>/<file>` for every image; file names made plain and unique within their class.
function zipEntries() {
  const entries = [];
  for (const { label, images } of classes) {
    const taken = new Set();
    for (const { file } of images) {
      const extension = extensionOf(file);
      const dot = file.name.lastIndexOf(".");
      const plain = (dot > 0 ? file.name.slice(0, dot) : file.name).replace(/[^A-Za-z0-9_-]+/g, "_");
      const stem = plain.slice(0, 80) || "image";
      let name = `${stem}${extension}`;
      for (let n = 2; taken.has(name.toLowerCase()); n++) name = `${stem}-${n}${extension}`;
      taken.add(name.toLowerCase());
      entries.push({ name: `${label}/${name}`, blob: file });
    }
  }
  return entries;
}

// --- training: the job ---------------------------------------------------------------------------

function trainProblem() {
  const model = modelProblem($("train-model").value.trim());
  $("train-model").setAttribute("aria-invalid", String(Boolean(model)));
  if (model) return [model, "train-model"];
  const steps = $("steps").value.trim();
  if (steps && !(/^\d+$/.test(steps) && Number(steps) >= 1)) {
    return ["Training steps is a whole number, 1 or more.", "steps"];
  }
  const empty = classes.find((klass) => !klass.images.length);
  if (empty) return [`Class ${empty.label} has no images: add some, or remove it.`, `${empty.id}-files`];
  if (classes.length < 2) {
    return ["Add at least two classes, each with images: a model tells classes apart.", "class-name"];
  }
  return null;
}

async function train() {
  const problem = trainProblem();
  if (problem) {
    say("train-problem", problem[0]);
    $(problem[1]).focus();
    return;
  }
  say("train-problem", "");
  const model = $("train-model").value.trim();
  const steps = $("steps").value.trim();
  closeCamera();
  $("train-fields").disabled = true;
  const entries = zipEntries();
  job = { id: "", model, steps: steps ? Number(steps) : DEFAULT_STEPS, version: null, finished: false };
  const current = job;
  startJobPanel(current, `Packing ${imageCount(entries.length)} into a zip…`);
  let archive;
  try {
    archive = await storedZip(entries);
  } catch (error) {
    return endJob(current, `Could not pack the images: ${error.message}.`);
  }
  const form = new FormData();
  form.append("images", archive, `${model}.zip`);
  if (steps) form.append("how_many_training_steps", steps);
  $("job-state").textContent = `Sending ${imageCount(entries.length)} (${megabytes(archive.size)}) to the server…`;
  let response;
  try {
    response = await jobFetch(`/v1/models/${encodeURIComponent(model)}/jobs`, { method: "POST", body: form });
  } catch {
    return endJob(current, "Could not reach the server: nothing was sent.");
  }
  if (refused(response)) {
    await askToken(response);
    return endJob(current, "The admin token was refused, so nothing was trained: enter the token, then Train again.");
  }
  if (response.status !== 202) return endJob(current, `The server refused the job: ${await errorOf(response)}`);
  const created = await response.json();
  current.id = created.job;
  session(JOB_KEY, current.id);
  $("job-state").textContent = "Sent: the job is queued.";
  follow(current);
}

function megabytes(bytes) {
  return bytes < 1e6 ? `${Math.max(1, Math.round(bytes / 1e3))} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

function stepsOf(status) {
  const steps = status.options && Number(status.options.how_many_training_steps);
  return steps > 0 ? steps : DEFAULT_STEPS;
}

function startJobPanel(current, text) {
  $("job").hidden = false;
  busy("job", true);
  $("job-state").textContent = text;
  for (const fact of $("job-facts").querySelectorAll("dd")) fact.textContent = "–";
  $("job-model").textContent = current.model;
  $("job-bar").removeAttribute("value"); // indeterminate until there is a count
  $("job-error").textContent = "";
  $("job-warnings").replaceChildren();
  $("try-it").hidden = true;
  $("cancel-job").hidden = true;
}

// The job ended without a new version to try (or never started): say why, and let the form be used again.
function endJob(current, message, state = "failed") {
  current.finished = true;
  $("job-error").textContent = state === "failed" ? message : "";
  $("job-state").textContent = state === "failed" ? "Not trained." : message;
  $("cancel-job").hidden = true;
  $("train-fields").disabled = false;
  busy("job", false);
  session(JOB_KEY, null);
}

// The job's events: fetch() can send the token (EventSource cannot), and its body is read as it comes.
async function follow(current) {
  if (current.following) return;
  current.following = true;
  try {
    await followEvents(current);
  } finally {
    current.following = false;
  }
}

async function followEvents(current) {
  let lost = 0;
  while (job === current && !current.finished) {
    let response = null;
    try {
      response = await jobFetch(`/v1/jobs/${encodeURIComponent(current.id)}/events`, {
        headers: { accept: "text/event-stream" },
      });
    } catch {
      response = null;
    }
    if (response && refused(response)) {
      await askToken(response);
      $("job-state").textContent = "The admin token was refused: enter it again to follow the job.";
      busy("job", false);
      return;
    }
    if (response && response.status === 404) {
      return endJob(current, `The server does not know this job: ${await errorOf(response)}`);
    }
    if (response && response.ok && response.body) {
      try {
        await readEvents(response.body, (status) => {
          lost = 0;
          showJob(current, status);
        });
      } catch {
        // the connection broke: asked again below
      }
    }
    if (current.finished || job !== current) return;
    lost += 1;
    if (lost > 1) $("job-state").textContent = "Lost touch with the server; trying again…";
    await new Promise((resolve) => setTimeout(resolve, Math.min(10_000, 500 * 2 ** lost)));
  }
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replaceAll("\r\n", "\n");
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const data = buffer
        .slice(0, end)
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      buffer = buffer.slice(end + 2);
      if (data) onEvent(JSON.parse(data));
    }
  }
}

const PHASES = {
  images: "Reading the images",
  "Checking cache": "Looking for cached image features",
  "Computing bottlenecks": "Computing image features",
  "Decoding images": "Decoding the images",
  "features chosen": "Features chosen",
  training: "Training",
  evaluated: "Tested",
  exporting: "Exporting the model",
};
const REPORTED = new Set(["images", "features chosen", "training", "evaluated", "exporting"]); // not counting bars

function phaseText(progress, state) {
  const { phase, done, total } = progress;
  if (!phase) return state === "queued" ? "Waiting for the job before it" : "Starting";
  const name = PHASES[phase] || (phase.startsWith("Computing bottlenecks") ? PHASES["Computing bottlenecks"] : phase);
  const counting = !REPORTED.has(phase) && typeof done === "number" && typeof total === "number";
  return counting ? `${name}: ${done} of ${total}` : name;
}

function showJob(current, status) {
  if (job !== current) return;
  const progress = status.progress && typeof status.progress === "object" ? status.progress : {};
  current.steps = stepsOf(status);
  $("job-phase").textContent = status.state === "succeeded" ? "Done" : phaseText(progress, status.state);
  if (Array.isArray(progress.labels)) {
    const splits = [["training", "to train on"], ["validation", "to validate"], ["testing", "to test"]].filter(
      ([key]) => typeof progress[key] === "number",
    );
    const total = splits.reduce((sum, [key]) => sum + progress[key], 0);
    const parts = splits.map(([key, what]) => `${progress[key]} ${what}`).join(", ");
    $("job-images").textContent = `${imageCount(total)} in ${progress.labels.length} classes: ${parts}`;
  }
  if (typeof progress.step === "number") $("job-step").textContent = `${progress.step + 1} of ${current.steps}`;
  if (typeof progress.train_accuracy === "number") {
    $("job-train-accuracy").textContent = percent(progress.train_accuracy);
  }
  if (typeof progress.validation_accuracy === "number") {
    $("job-validation-accuracy").textContent = percent(progress.validation_accuracy);
  }
  const tested = status.result && typeof status.result.test_accuracy === "number" ? status.result : progress;
  if (typeof tested.test_accuracy === "number") {
    $("job-test-accuracy").textContent = `${percent(tested.test_accuracy)} of ${imageCount(tested.test_count || 0)}`;
  }
  const bar = $("job-bar");
  if (status.state === "succeeded") bar.value = 1;
  else if (progress.phase === "training" && typeof progress.step === "number") {
    bar.value = (progress.step + 1) / current.steps;
  }
  else if (!REPORTED.has(progress.phase) && progress.total > 0) bar.value = progress.done / progress.total;
  else if (progress.phase === "evaluated" || progress.phase === "exporting") bar.value = 1;
  else bar.removeAttribute("value");
  $("job-warnings").replaceChildren(...(status.warnings || []).map((warning) => element("li", {}, String(warning))));
  $("cancel-job").hidden = FINISHED.includes(status.state);
  if (status.state === "queued") $("job-state").textContent = "Queued: the server trains one job at a time.";
  else if (status.state === "running") $("job-state").textContent = "Training on the server…";
  else if (status.state === "failed") endJob(current, `The job failed: ${status.error || "no reason given"}`);
  else if (status.state === "cancelled") endJob(current, "Cancelled: nothing was exported.", "cancelled");
  else if (status.state === "succeeded") succeeded(current, status);
}

// Trained: wait until the server serves the new version, then offer to try it.
async function succeeded(current, status) {
  current.finished = true;
  session(JOB_KEY, null);
  const version = status.result && Number.isInteger(status.result.version) ? status.result.version : null;
  current.version = version;
  const which = version === null ? `a new version of ${current.model}` : `version ${version} of ${current.model}`;
  $("job-state").textContent = `Trained ${which}; waiting for the server to load it…`;
  const outcome = await whenServed(current.model, version);
  if (job !== current) return;
  if (outcome) {
    $("job-error").textContent = `The server trained ${which} but refused to serve it: ${outcome}`;
    $("job-state").textContent = "Trained, not served.";
  } else {
    $("job-state").textContent = `Trained: ${which} is served.`;
    $("try-it").hidden = false;
  }
  $("train-fields").disabled = false;
  busy("job", false);
  refresh(); // the picker lists the new version
}

// "" once the version (else any version of the model) is AVAILABLE; the reason if it was refused.
async function whenServed(name, version) {
  const deadline = Date.now() + SERVED_WITHIN;
  for (let wait = 250; Date.now() < deadline; wait = Math.min(2000, wait * 2)) {
    try {
      const response = await fetch("/models", { cache: "no-store" });
      const list = response.ok ? (await response.json()).models : [];
      const model = Array.isArray(list) ? list.find((each) => each.name === name) : null;
      const versions = model ? model.versions.filter((each) => version === null || each.version === version) : [];
      if (versions.some((each) => each.state === AVAILABLE)) return "";
      const refusedVersion = versions.find((each) => each.error);
      if (refusedVersion) return refusedVersion.error;
    } catch {
      // asked again below
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
  return `it was not loaded within ${SERVED_WITHIN / 60_000} minutes (the server's log says why)`;
}

async function cancelJob() {
  const current = job;
  if (!current || !current.id || current.finished) return;
  $("cancel-job").disabled = true;
  try {
    const response = await jobFetch(`/v1/jobs/${encodeURIComponent(current.id)}`, { method: "DELETE" });
    if (refused(response)) await askToken(response);
    else if (!response.ok) $("job-error").textContent = `Could not cancel: ${await errorOf(response)}`;
    else $("job-state").textContent = "Cancelling…"; // the events say when it has stopped
  } catch {
    $("job-error").textContent = "Could not reach the server to cancel the job.";
  } finally {
    $("cancel-job").disabled = false;
  }
}

function tryIt() {
  if (!job || !job.finished) return;
  choice.model = job.model;
  choice.version = job.version === null ? DEFAULT : String(job.version);
  const which = job.version === null ? job.model : `version ${job.version} of ${job.model}`;
  $("picker-status").textContent = `Just trained: your images now go to ${which}.`;
  showView("predict");
  refresh();
  $("files").focus();
}

// Files dragged over the Train view: the class under the pointer lights up, and takes them when dropped.
function dragOverClasses(event) {
  const card = event && event.target instanceof Element ? event.target.closest(".class-card") : null;
  for (const klass of classes) klass.card.classList.toggle("over", klass.card === card);
  if (event && !card) event.dataTransfer.dropEffect = "none";
}

function dropOnClasses(event) {
  const card = event.target instanceof Element ? event.target.closest(".class-card") : null;
  dragOverClasses(null);
  const klass = classes.find((each) => each.card === card);
  if (!klass || $("train-fields").disabled) say("train-problem", "Drop images on one of the classes.");
  else addToClass(klass, event.dataTransfer.files);
}

// --- training: wiring ----------------------------------------------------------------------------

$("token-form").addEventListener("submit", useToken);
$("forget-token").addEventListener("click", () => {
  keepToken("");
  askToken(null);
});
$("add-class").addEventListener("submit", addClass);
$("train-button").addEventListener("click", train);
$("capture").addEventListener("click", capture);
$("camera-done").addEventListener("click", closeCamera);
$("cancel-job").addEventListener("click", cancelJob);
$("try-it").addEventListener("click", tryIt);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) closeCamera(); // nobody is looking at it
});
window.addEventListener("pagehide", closeCamera);
if (location.hash === "#train") showView("train"); // a reload keeps the view
