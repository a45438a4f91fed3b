// The page at /: photos go to POST /v1/predict one at a time; each comes back with its faces boxed and
// labelled "age ±spread" (an SVG over the photo, in the photo's own pixel coordinates), and a table row per face.
"use strict";

const PALETTE = ["#ff3838", "#00c2ff", "#ffb21d", "#48f90a", "#cf38ff", "#ff701f"]; // as `age predict --draw`
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "agecli-token";

const $ = (id) => document.getElementById(id);
let queue = Promise.resolve(); // photos are sent one after another, in the order they were given

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({ error: `the server answered ${response.status} without JSON` }));
  if (response.status === 401) askForToken(body.error);
  return { ok: response.ok, status: response.status, body };
}

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-message").textContent = sessionStorage.getItem(TOKEN_KEY) ? message : "";
  $("token").focus();
}

async function showModel() {
  const { ok, body } = await api("/v1/model");
  if (!ok) {
    $("model").textContent = body.error;
    return;
  }
  const mae = body.metrics && typeof body.metrics.mae === "number" ? `, test MAE ${body.metrics.mae.toFixed(2)} years` : "";
  const data = body.trained_on ? `, trained on ${body.trained_on}` : "";
  $("model").textContent = `model ${body.name} (${body.architecture}; ${body.backend}; detector ${body.detector})` +
    `${mae}${data}. Licence: ${body.licence}.`;
}

// A number to show, or "" when the answer has none (null, or an older server's missing field): never throws.
function fixed(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "";
}

function label(face) {
  const age = fixed(face.age, 1) || "?";
  const spread = fixed(face.spread, 1);
  return spread ? `${age} ±${spread}` : age;
}

function photoCard(file) {
  const figure = document.createElement("figure");
  figure.className = "photo";
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("aria-hidden", "true");
  frame.append(img, svg);
  const caption = document.createElement("figcaption");
  caption.textContent = `${file.name}: estimating…`;
  figure.append(frame, caption);
  $("photos").append(figure);
  return { figure, svg, caption };
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// Boxes and labels scale with the photo, as the annotated copies of `age predict --draw` do.
function drawFaces(svg, result) {
  const { width, height } = result.image;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const short = Math.min(width, height);
  const line = Math.max(1, Math.round(short / 250));
  const fontSize = Math.max(9, Math.round(short * 0.035));
  const pad = Math.max(1, Math.floor(fontSize / 6));
  result.faces.forEach((face, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const [x0, y0, x1, y1] = face.box;
    svg.append(svgElement("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: colour,
                                    "stroke-width": line, class: "box" }));
    const text = svgElement("text", { "font-size": fontSize, "font-weight": "bold", fill: "#fff",
                                      "font-family": "DejaVu Sans, Arial, sans-serif", class: "label",
                                      "data-age": face.age });
    text.textContent = label(face);
    const background = svgElement("rect", { fill: colour });
    svg.append(background, text);
    const box = text.getBBox(); // measured where it is drawn, so the label fits its text in any font
    const w = box.width + 2 * pad, h = box.height + 2 * pad;
    const lx = Math.min(x0, Math.max(0, width - w));
    const ly = y0 - h >= 0 ? y0 - h : Math.min(y0, Math.max(0, height - h));
    background.setAttribute("x", lx); background.setAttribute("y", ly);
    background.setAttribute("width", w); background.setAttribute("height", h);
    text.setAttribute("x", lx + pad); text.setAttribute("y", ly + pad - box.y);
  });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function addRows(name, result) {
  const body = $("faces").tBodies[0];
  result.faces.forEach((face, i) => {
    const row = document.createElement("tr");
    const number = cell(String(i + 1), "number");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[i % PALETTE.length];
    number.prepend(swatch);
    const age = cell(fixed(face.age, 1), "number age");
    age.dataset.age = face.age;
    const spread = fixed(face.spread, 1);
    row.append(cell(name), number, age, cell(spread ? `±${spread}` : "", "number spread"),
               cell(fixed(face.score, 3), "number"),
               cell(face.box.map((v) => Math.round(v)).join(", ")));
    body.append(row);
  });
  $("table-section").hidden = false;
}

async function estimate(file) {
  const { figure, svg, caption } = photoCard(file);
  const form = new FormData();
  form.append("image", file, file.name);
  let answer;
  try {
    answer = await api("/v1/predict", { method: "POST", body: form });
  } catch (err) {
    answer = { ok: false, body: { error: `the server did not answer (${err.message})` } };
  }
  if (!answer.ok) {
    figure.classList.add("failed");
    caption.textContent = `${file.name}: ${answer.body.error}`;
    caption.classList.add("error");
    return;
  }
  const result = answer.body;
  if (!result || !Array.isArray(result.faces) || !result.image) { // never throw on an answer of another shape
    figure.classList.add("failed");
    caption.textContent = `${file.name}: the server's answer holds no faces list`;
    caption.classList.add("error");
    return;
  }
  drawFaces(svg, result);
  addRows(file.name, result);
  const n = result.faces.length;
  caption.textContent = n ? `${file.name}: ${n} face${n > 1 ? "s" : ""}` : `${file.name}: ${result.message}`;
  figure.dataset.done = "true";
}

function take(files) {
  for (const file of files) queue = queue.then(() => estimate(file));
}

function wireDrop() {
  const drop = $("drop");
  $("files").addEventListener("change", (event) => {
    take(Array.from(event.target.files));
    event.target.value = ""; // choosing the same photo again sends it again
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    take(Array.from(event.dataTransfer.files).filter((f) => f.type.startsWith("image/") || f.type === ""));
  });
  // a photo dropped beside the zone must not make the browser navigate away from the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

function wireToken() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token-form").hidden = true;
    showModel();
  });
}

wireDrop();
wireToken();
showModel();
