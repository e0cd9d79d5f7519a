// histodetect's page: patches -> /v1/predict and /v1/explain, slides -> /v1/slides + polling.
// Plain JavaScript, no build step; text from the server is always set as text, never as HTML.
"use strict";

const PARALLEL_REQUESTS = 4; // the server joins concurrent requests into shared forward passes
const POLL_MS = 500;
const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

// One sentence from an error response ({"error": ...}) or a network failure.
async function errorSentence(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}.`;
}

async function postForm(url, form) {
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form });
  } catch (_) {
    throw new Error("the server cannot be reached; is histodetect serve still running?");
  }
  if (!response.ok) throw new Error(await errorSentence(response));
  return response.json();
}

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

// ---------------------------------------------------------------- model and model card

async function loadModel() {
  try {
    const response = await fetch("/v1/model");
    if (!response.ok) throw new Error(await errorSentence(response));
    const info = await response.json();
    const m = info.model;
    $("model-line").textContent =
      `Model ${m.name} (${m.file}): tumour at probability ≥ ${m.threshold.toFixed(3)}, ` +
      `temperature ${m.temperature.toFixed(3)}${m.tta ? ", TTA ×8" : ""}; ` +
      `${info.patch_size_px} px patches at ${info.mpp} µm/px, on ${info.device}.`;
    renderCard(info);
  } catch (error) {
    showMessage(`The model could not be loaded: ${error.message}`);
  }
}

function renderCard(info) {
  const list = element("dl");
  const add = (key, value) => {
    const text = typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    list.append(element("dt", { textContent: key }), element("dd", { textContent: text }));
  };
  for (const [key, value] of Object.entries(info.model_card)) add(key, value);
  for (const [key, value] of Object.entries(info.spec)) add(`spec.${key}`, value);
  $("model-card-body").replaceChildren(list);
}

// ---------------------------------------------------------------- patches

function addRow(file) {
  const thumb = element("img", { alt: `patch ${file.name}` });
  if (/\.(png|jpe?g)$/i.test(file.name)) thumb.src = URL.createObjectURL(file);
  const row = element("tr", { className: "pending" }, [
    element("td", {}, [thumb]),
    element("td", { className: "id", textContent: file.name.replace(/\.[^.]*$/, "") }),
    element("td", { className: "probability-cell", textContent: "…" }),
    element("td", { className: "class" }),
    element("td", { className: "overlay" }),
  ]);
  row.dataset.state = "pending";
  $("results").tBodies[0].append(row);
  $("results").hidden = false;
  return row;
}

function showPrediction(row, prediction) {
  const p = prediction.probability;
  const bar = element("div", { className: "bar" }, [element("span")]);
  bar.firstChild.style.width = `${(100 * p).toFixed(1)}%`;
  const cell = row.querySelector(".probability-cell");
  cell.replaceChildren(element("span", { className: "probability", textContent: p.toFixed(6) }), bar);
  const cls = row.querySelector(".class");
  cls.textContent = prediction.class_name;
  cls.className = `class class-${prediction.class}`;
  row.querySelector(".id").textContent = prediction.id;
  row.dataset.probability = String(p);
  row.dataset.state = "done";
}

function showRowError(row, text) {
  const thumb = row.querySelector("td img"); // the file may not be an image at all
  thumb.removeAttribute("src");
  thumb.hidden = true;
  const cell = row.querySelector(".probability-cell");
  cell.className = "probability-cell error";
  cell.colSpan = 3;
  cell.textContent = text;
  row.querySelector(".class").remove();
  row.querySelector(".overlay").remove();
  row.className = "failed";
  row.dataset.state = "failed";
}

async function predictFile(file, row) {
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const answer = await postForm("/v1/predict", form);
    showPrediction(row, answer.predictions[0]);
    return true;
  } catch (error) {
    showRowError(row, error.message);
    return false;
  }
}

async function explainFile(file, row) {
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const answer = await postForm("/v1/explain", form);
    row.querySelector("td img").src = answer.patch_png;
    const overlay = element("img", { src: answer.overlay_png, alt: `Grad-CAM of ${file.name}` });
    row.querySelector(".overlay").replaceChildren(overlay);
  } catch (error) {
    row.querySelector(".overlay").textContent = error.message;
  }
}

// Run `work` over items with at most `limit` at a time.
async function eachLimited(items, limit, work) {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      await work(items[index], index);
    }
  });
  await Promise.all(runners);
}

async function handleFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  showMessage("");
  const rows = files.map(addRow);
  const ok = [];
  await eachLimited(files, PARALLEL_REQUESTS, async (file, i) => {
    if (await predictFile(file, rows[i])) ok.push(i);
  });
  for (const i of ok.sort((a, b) => a - b)) await explainFile(files[i], rows[i]);
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("files");
  input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    handleFiles(event.dataTransfer.files);
  });
}

// ---------------------------------------------------------------- slides

async function loadSlideNames() {
  try {
    const response = await fetch("/v1/slides");
    if (!response.ok) return;
    const { slides } = await response.json();
    if (!slides.length) return;
    const select = $("slide-name");
    for (const name of slides) select.append(element("option", { value: name, textContent: name }));
    $("slide-name-label").hidden = false;
  } catch (_) { /* the slide list is optional */ }
}

async function submitSlide(event) {
  event.preventDefault();
  showMessage("");
  const form = new FormData();
  const file = $("slide-file").files[0];
  const name = $("slide-name").value;
  if (file) form.append("file", file, file.name);
  else if (name) form.append("name", name);
  else return showMessage("Choose a slide file (or a slide on the server) first.");
  if ($("slide-mpp").value) form.append("mpp", $("slide-mpp").value);
  $("slide-job").hidden = false;
  $("slide-result").hidden = true;
  $("slide-status").textContent = "Uploading…";
  $("slide-progress").value = 0;
  try {
    const job = await postForm("/v1/slides", form);
    await pollJob(job.url);
  } catch (error) {
    $("slide-status").textContent = "";
    showMessage(`The slide could not be analysed: ${error.message}`);
  }
}

async function pollJob(url) {
  for (;;) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(await errorSentence(response));
    const job = await response.json();
    $("slide-progress").value = job.progress;
    const tiles = job.tiles_total === null ? "" : ` (${job.tiles_scored} of ${job.tiles_total} tissue tiles)`;
    $("slide-status").textContent = `${job.slide}: ${job.stage}${tiles}`;
    if (job.status === "failed") throw new Error(job.error);
    if (job.status === "done") return showSlideResult(job);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function showSlideResult(job) {
  const s = job.summary;
  $("slide-overlay").src = job.links.overlay;
  $("slide-summary").textContent =
    `Max probability ${s.max_probability.toFixed(3)}; tumour ${s.tumour_area_mm2.toFixed(3)} mm² ` +
    `(${(100 * s.tumour_fraction_of_tissue).toFixed(1)}% of tissue) in ${s.n_regions} regions; ` +
    `${s.n_tiles} tiles.`;
  const links = ["heatmap", "regions", "summary", "report", "tiles"].map((key) =>
    element("a", { href: job.links[key], textContent: key, target: "_blank" }));
  $("slide-links").replaceChildren(...links.flatMap((a, i) => (i ? [" · ", a] : [a])));
  $("slide-result").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  loadModel();
  loadSlideNames();
  setUpDropZone();
  $("slide-form").addEventListener("submit", submitSlide);
});
