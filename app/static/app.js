// galmet web page: send coordinates or an image to the API and show the answer
// (the batch section is batch.js).
import { flagSentence } from "./flags.js";
import { MZR_RANGE, massMetallicity, tremonti } from "./plots.js";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("result").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

function showResult(p, imageUrl) {
  $("error").hidden = true;
  $("cutout").src = imageUrl;
  $("oh").textContent = p.oh_p50 === null ? "" : `12 + log(O/H) = ${p.oh_p50.toFixed(3)}`;
  $("oh-sigma").textContent = p.oh_sigma === null ? "" : `± ${p.oh_sigma.toFixed(3)}`;
  $("mass").textContent = p.log_mstar === null ? ""
    : `log M*/M☉ = ${p.log_mstar.toFixed(2)} ± ${p.log_mstar_sigma.toFixed(2)}`;
  const where = p.source === "coordinates"
    ? `RA ${p.ra.toFixed(5)}, Dec ${p.dec.toFixed(5)}` : "uploaded image";
  $("details").textContent =
    `${where} · ${p.cached ? "from the cache" : "computed now"} · TTA ${p.tta} · ` +
    `model ${p.model_name} (${p.model_version.slice(0, 12)})`;
  showObject(p);
  showFlags(p.flags);
  showMassMetallicity(p);
  $("notice").textContent = p.notice || "";
  $("result").hidden = false;
}

// Each quality flag as a sentence; the flag's own name is its tooltip.
function showFlags(flags) {
  const list = $("flags");
  list.replaceChildren(...flags.map((flag) => {
    const item = document.createElement("li");
    item.textContent = flagSentence(flag);
    item.title = flag;
    item.dataset.flag = flag;
    return item;
  }));
  list.hidden = flags.length === 0;
}

// For a model that predicts stellar mass: the galaxy on the mass–metallicity relation.
function showMassMetallicity(p) {
  const figure = $("mzr");
  const plot = $("mzr-plot");
  const show = p.log_mstar !== null && p.oh_p50 !== null;
  figure.hidden = !show;
  if (!show) {
    plot.replaceChildren();
    return;
  }
  plot.replaceChildren(massMetallicity(p.log_mstar, p.log_mstar_sigma, p.oh_p50, p.oh_sigma));
  const [lo, hi] = MZR_RANGE;
  if (p.log_mstar < lo || p.log_mstar > hi) {
    $("mzr-offset").textContent = `log M* is outside ${lo}–${hi}, where the relation was fitted.`;
  } else {
    const offset = p.oh_p50 - tremonti(p.log_mstar);
    const side = offset >= 0 ? "above" : "below";
    $("mzr-offset").textContent = `${Math.abs(offset).toFixed(2)} dex ${side} the relation.`;
  }
}

// The SDSS object the prediction is about, linked to SkyServer's Explore page.
function showObject(p) {
  const box = $("object");
  box.replaceChildren();
  if (p.object) {
    const o = p.object;
    const link = document.createElement("a");
    link.href = o.explore_url;
    link.target = "_blank";
    link.rel = "noopener";
    // objIDs pass 2^53, past what a JavaScript number holds exactly: the digits are taken
    // from the link the API built, not from the parsed JSON number.
    const objID = new URL(o.explore_url).searchParams.get("id") || String(o.objID);
    link.textContent = `SDSS ${objID}`;
    box.append(link, ` · ${o.type_name} · ${o.separation_arcsec.toFixed(2)}″ from the position ` +
      `given (cutout centred on the object at RA ${o.ra.toFixed(5)}, Dec ${o.dec.toFixed(5)})`);
  } else if (p.source === "coordinates") {
    box.textContent = p.object_error || "no SDSS object within the match radius";
  }
}

async function answer(response) {
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const flags = body.flags && body.flags.length ? ` (${body.flags.join(", ")})` : "";
    throw new Error(`${response.status}: ${body.detail}${flags}`);
  }
  return body;
}

$("coords-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const ra = $("ra").value.trim();
  const dec = $("dec").value.trim();
  const query = new URLSearchParams({ ra, dec });
  $("predict-button").disabled = true;
  try {
    const p = await answer(await fetch(`/api/v1/predict?${query}`));
    showResult(p, `/api/v1/cutout?${query}`);
  } catch (err) {
    showError(err.message);
  } finally {
    $("predict-button").disabled = false;
  }
});

async function sendFile(file) {
  const form = new FormData();
  form.append("file", file);
  try {
    const p = await answer(await fetch("/api/v1/predict/image", { method: "POST", body: form }));
    showResult(p, URL.createObjectURL(file));
  } catch (err) {
    showError(err.message);
  }
}

const zone = $("drop-zone");
zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  if (e.dataTransfer.files.length) sendFile(e.dataTransfer.files[0]);
});
$("file-input").addEventListener("change", (e) => {
  if (e.target.files.length) sendFile(e.target.files[0]);
});
