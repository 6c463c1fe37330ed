// resnetkit serve web page: pick a model, drop images, see top-k bars. No external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showBanner(message) {
  $("banner").textContent = message;
  $("banner").hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (typeof body.message === "string") return body.message;  // TorchServe's shape (/explanations)
    const failed = (body.results || []).find((r) => r.error);
    if (failed) return failed.error;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: authHeaders() });
  if (response.status === 401) {
    $("token-field").hidden = false;
    showBanner("This server requires a token: enter it above.");
    return;
  }
  if (!response.ok) {
    showBanner(await errorMessage(response));
    return;
  }
  models = (await response.json()).models;
  if (!models.length) {
    showBanner("The models are still loading; reload the page in a few seconds.");
    return;
  }
  showBanner("");
  $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  describeModel();
}

function describeModel() {
  const m = models.find((x) => x.name === $("model").value);
  if (!m) return;
  const top1 = m.published_top1 == null ? ""
    : `, top-1 ${m.published_top1} % on ${m.dataset} for fp32, published by ${m.published_source} (not measured here)`;
  $("model-info").textContent =
    `${m.arch} · weights ${m.weights} · ${m.num_classes} classes · input ${m.input_size}px · runs ${m.runtime}${top1}`;
  $("weights-note").hidden = m.weights !== "random";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function bar(prediction, first) {
  const row = element("div", first ? "bar top" : "bar");
  const fill = element("div", "fill");
  fill.style.width = `${(prediction.score * 100).toFixed(1)}%`;
  const text = element("div", "text");
  text.append(element("span", "label", prediction.label), element("span", "pct", `${(prediction.score * 100).toFixed(1)} %`));
  row.append(fill, text);
  return row;
}

function newCard(file) {
  const card = element("article", "card");
  const img = element("img", "thumb");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.onload = () => URL.revokeObjectURL(img.src);
  img.onerror = () => img.replaceWith(element("div", "thumb"));  // not an image: a grey placeholder
  const body = element("div", "body");
  body.append(element("div", "name", file.name), element("div", "latency", "classifying…"));
  card.append(img, body);
  $("results").prepend(card);
  return body;
}

function fillCard(body, result, latencyMs, model) {
  body.querySelector(".latency").remove();
  if (result.error) {
    body.append(element("div", "error", result.error.charAt(0).toUpperCase() + result.error.slice(1)));
    return;
  }
  result.predictions.forEach((p, i) => body.append(bar(p, i === 0)));
  const ran = model ? `${model.name} on ${model.backend}/${model.precision} · ` : "";
  body.append(element("div", "latency", `${ran}server ${latencyMs.toFixed(1)} ms`));
}

async function classify(file) {
  const body = newCard(file);
  const name = $("model").value;  // the card's model, even if another is picked while it is classified
  const model = models.find((m) => m.name === name);
  const form = new FormData();
  form.append("file", file, file.name);
  const url = `/v1/models/${encodeURIComponent(name)}/classify?top_k=${$("topk").value}`;
  try {
    const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
    const json = response.headers.get("content-type")?.includes("json") ? await response.clone().json() : null;
    if (json && json.results) {
      fillCard(body, json.results[0], json.latency_ms, model);
      if (!json.results[0].error) offerHeatmap(body, file, name);
    } else {
      fillCard(body, { error: await errorMessage(response) }, 0);
    }
  } catch (e) {
    fillCard(body, { error: "The server could not be reached: " + e.message }, 0);
  }
}

function handleFiles(fileList) {
  if (!$("model").value) {
    showBanner("No model is available yet.");
    return;
  }
  [...fileList].forEach(classify);  // one request per image: the server batches them together
}

function setUp() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFiles(e.dataTransfer.files); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("files").click(); });
  $("model").addEventListener("change", describeModel);
  $("token").addEventListener("change", loadModels);
  loadModels();
}

// Heatmap on request: POST /explanations/{model} (grad-cam of the top class), shown in place of the thumbnail;
// by the model that classified the card, whichever is picked when the button is pressed.
function offerHeatmap(body, file, modelName) {
  const button = element("button", "heatmap", "show heatmap");
  button.type = "button";
  button.onclick = async () => {
    button.disabled = true;
    button.textContent = "computing heatmap…";
    const form = new FormData();
    form.append("file", file, file.name);
    const url = `/explanations/${encodeURIComponent(modelName)}`;
    try {
      const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
      if (!response.ok) throw new Error(await errorMessage(response));
      const img = element("img", "thumb");
      const label = decodeURIComponent(response.headers.get("X-Label"));  // percent-encoded UTF-8
      img.alt = `heatmap of ${label} over ${file.name}`;
      img.src = URL.createObjectURL(await response.blob());
      body.parentElement.querySelector(".thumb").replaceWith(img);
      button.textContent = `heatmap: ${label}`;
    } catch (e) {
      button.replaceWith(element("div", "error", e.message));
    }
  };
  body.append(button);
}

document.addEventListener("DOMContentLoaded", setUp);
