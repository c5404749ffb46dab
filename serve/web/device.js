// "Run in this browser": the images are classified in this page, never uploaded. MediaPipe Tasks for
// Web (@mediapipe/tasks-vision, vendored from npm into serve/web/vendor/ and served by this server:
// nothing comes from a CDN) runs the chosen version's model.tflite, which carries its preprocessing
// and labels as TFLite metadata, so the labels are the ones POST /predict gives.
// The version is resolved as /predict resolves it: a HEAD of /v1/models/<name>/model.tflite names it
// (x-model-version); the file is fetched once per version, and the classifier rebuilt when it changes.
// It uses app.js's choice, DEFAULT and TOP_K, and its $, showRanks, showError, explain and refresh.
"use strict";

const RUNTIME = "/web/vendor/tasks-vision";
const device = {
  on: false,
  vision: null, // the promise of [module, fileset], made on first use
  loaded: null, // { key, name, version, classifier }: the classifier on hand
  queue: Promise.resolve(), // one at a time: loads and classifications run on this thread anyway
};

function runsHere() {
  return device.on;
}

function showDevice(state, text) {
  $("device").dataset.state = state;
  $("device-status").textContent = text;
}

// Whether this server has the runtime and this browser can run it; the switch stays off otherwise.
async function checkDevice() {
  if (typeof WebAssembly !== "object" || typeof createImageBitmap !== "function") {
    return showDevice("unavailable", "This browser cannot run models itself (no WebAssembly).");
  }
  let response;
  try {
    response = await fetch(`${RUNTIME}/vision_bundle.mjs`, { method: "HEAD", cache: "no-store" });
  } catch {
    response = null;
  }
  if (!response || !response.ok) {
    return showDevice(
      "unavailable",
      "Running models in this browser is not installed on this server (scripts/vendor_web.py installs it).",
    );
  }
  $("device-switch").disabled = false;
  showDevice("off", "Off: images are sent to this server.");
}

function switchDevice(on) {
  device.on = on;
  $("files-hint").textContent = on
    ? "JPEG, PNG, GIF, BMP or WebP, one or many. They stay in this browser: nothing is uploaded."
    : "JPEG, PNG, GIF, BMP or WebP, one or many. They go to this server only.";
  if (on) return prepare();
  showDevice("off", "Off: images are sent to this server.");
  device.queue = device.queue.then(() => {
    if (device.on || !device.loaded) return; // on again meanwhile: kept
    device.loaded.classifier.close(); // after the images already added, which still run here
    device.loaded = null;
    delete $("device").dataset.loaded;
  });
}

// Loads the chosen version into the page now, so the first image does not wait for it.
function prepare() {
  const target = { ...choice };
  if (!target.model) return showDevice("waiting", "On: no model is served yet.");
  showDevice("loading", `Loading ${target.model} into this browser…`);
  device.queue = device.queue
    .then(() => classifierFor(target))
    .then(
      (loaded) => {
        if (device.on) showDevice("ready", `On: ${loaded.name}, version ${loaded.version}, runs in this browser.`);
      },
      (error) => {
        if (device.on) showDevice("error", `Could not run the model in this browser: ${problem(error)}`);
      },
    );
}

function problem(error) {
  return error.status ? explain(error.status, "")[0] : error.message || String(error);
}

function modelUrl(name, version) {
  const where = version === DEFAULT ? "" : `/versions/${encodeURIComponent(version)}`;
  return `/v1/models/${encodeURIComponent(name)}${where}/model.tflite`;
}

function vision() {
  if (!device.vision) {
    device.vision = import(`${RUNTIME}/vision_bundle.mjs`).then(async (module) => [
      module,
      await module.FilesetResolver.forVisionTasks(`${RUNTIME}/wasm`),
    ]);
    device.vision.catch(() => (device.vision = null)); // a failed load is tried again next time
  }
  return device.vision;
}

// The classifier of the version the server resolves `target` to; the previous one is closed.
async function classifierFor(target) {
  const head = await fetch(modelUrl(target.model, target.version), { method: "HEAD", cache: "no-store" });
  if (!head.ok) throw Object.assign(new Error(`HTTP ${head.status}`), { status: head.status });
  const name = head.headers.get("x-model-name");
  const version = head.headers.get("x-model-version");
  const key = JSON.stringify([name, version]);
  if (device.loaded && device.loaded.key === key) return device.loaded;
  const response = await fetch(modelUrl(name, version));
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status });
  const model = new Uint8Array(await response.arrayBuffer());
  const [{ ImageClassifier }, fileset] = await vision();
  const classifier = await ImageClassifier.createFromOptions(fileset, {
    baseOptions: { modelAssetBuffer: model },
    maxResults: TOP_K,
    runningMode: "IMAGE",
  });
  if (device.loaded) device.loaded.classifier.close();
  device.loaded = { key, name, version, classifier };
  $("device").dataset.loaded = `${name} ${version}`; // what the page holds: the tests wait on it
  return device.loaded;
}

// One image, in turn with the others; its card shows the labels as a server answer's would.
function classifyHere(file, item, target) {
  const turn = device.queue.then(() => classifyNow(file, item, target));
  device.queue = turn.catch(() => {});
  return turn;
}

// `gone`: the version asked for first, when it was no longer served and the default answers instead.
async function classifyNow(file, item, target, gone = "") {
  item.querySelector(".status").textContent = "Classifying in this browser…";
  let image;
  try {
    // The file's own pixels, as the server decodes them: upright by its EXIF, no colour management.
    image = await createImageBitmap(file, {
      imageOrientation: "from-image",
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch {
    return showError(item, "Not an image this browser can read.");
  }
  try {
    let loaded;
    try {
      loaded = await classifierFor(target);
    } catch (error) {
      if (error.status === 404 && target.version !== DEFAULT && !gone) {
        await refresh(); // the picker says the version is gone and takes the default
        return classifyNow(file, item, { model: target.model, version: DEFAULT }, target.version);
      }
      if (error.status) return showError(item, ...explain(error.status, ""));
      return showError(item, "This browser could not run the model.", problem(error));
    }
    const categories = loaded.classifier.classify(image).classifications[0]?.categories || [];
    const predictions = categories.map((category) => ({ label: category.categoryName, score: category.score }));
    showRanks(item, predictions, { name: loaded.name, version: loaded.version }, gone, true);
    if (device.on) showDevice("ready", `On: ${loaded.name}, version ${loaded.version}, runs in this browser.`);
  } finally {
    image.close();
  }
}

$("device-switch").addEventListener("change", (event) => switchDevice(event.target.checked));
for (const id of ["model-choice", "version-choice"]) {
  $(id).addEventListener("change", () => device.on && prepare()); // after app.js has taken the choice
}
checkDevice();
