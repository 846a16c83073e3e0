// galmet web page, batch section: a target list is POSTed to the jobs API, its progress
// followed by polling the job's status, then its results offered for download and its
// predicted O/H drawn as a histogram.
import { histogram } from "./plots.js";

const $ = (id) => document.getElementById(id);
const JOBS = "/api/v1/jobs";
const POLL_MS = 500;
const MAX_POLL_FAILURES = 5; // consecutive failed status requests before giving up

// The result formats offered for download (the `format` of GET /jobs/{id}/results):
// another format the API serves is one more entry here.
const DOWNLOADS = [
  { format: "csv", label: "CSV", suffix: "csv" },
  { format: "votable", label: "VOTable", suffix: "vot" },
  { format: "fits", label: "FITS", suffix: "fits" },
];

let current = 0; // the job the page follows; a newer submission stops the older's polling

async function body(response) {
  const answer = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${answer.detail}`);
  return answer;
}

function showBatchError(message) {
  $("batch-error").textContent = message;
  $("batch-error").hidden = false;
}

async function submit(file) {
  const mine = ++current;
  $("batch-error").hidden = true;
  $("job").hidden = true;
  const form = new FormData();
  form.append("file", file);
  let job;
  try {
    job = await body(await fetch(JOBS, { method: "POST", body: form }));
  } catch (err) {
    showBatchError(`${file.name}: ${err.message}`);
    return;
  }
  $("downloads").replaceChildren();
  $("histogram").hidden = true;
  $("job").hidden = false;
  follow(job, mine);
}

async function follow(job, mine) {
  let failures = 0;
  while (mine === current) {
    showStatus(job);
    if (job.status === "done") {
      await finish(job);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      job = await body(await fetch(`${JOBS}/${job.id}`));
      failures = 0;
    } catch (err) {
      failures += 1;
      if (failures >= MAX_POLL_FAILURES) {
        showBatchError(`lost the job's status (${err.message}); job id ${job.id}`);
        return;
      }
    }
  }
}

function showStatus(job) {
  const c = job.counts;
  const answered = job.n_targets - c.queued;
  const percent = Math.floor(job.progress * 100);
  $("job-progress").value = job.progress;
  $("job-percent").textContent = `${percent}%`;
  $("job-title").textContent =
    `Job ${job.id.slice(0, 8)}${job.filename ? ` (${job.filename})` : ""}: ${job.status}`;
  $("job-counts").textContent =
    `${answered} of ${job.n_targets} answered · ${c.done} predicted · ` +
    `${c.failed} failed · ${c.invalid} invalid`;
}

async function finish(job) {
  $("downloads").replaceChildren(
    "Download the results: ",
    ...DOWNLOADS.flatMap(({ format, label, suffix }, i) => {
      const link = document.createElement("a");
      link.id = `download-${format}`;
      link.href = `${JOBS}/${job.id}/results?format=${format}`;
      link.download = `galmet-${job.id}.${suffix}`;
      link.textContent = label;
      return i ? [" · ", link] : [link];
    }),
  );
  let rows;
  try {
    rows = await body(await fetch(`${JOBS}/${job.id}/results?format=json`));
  } catch (err) {
    showBatchError(`could not read the results: ${err.message}`);
    return;
  }
  const values = rows.map((r) => r.oh_p50).filter((v) => v !== null);
  const figure = $("histogram");
  const plot = $("histogram-plot");
  if (values.length === 0) {
    plot.replaceChildren();
    $("histogram-caption").textContent = "No row has a prediction: see the reason column.";
  } else {
    plot.replaceChildren(histogram(values, "12 + log(O/H)"));
    const sorted = [...values].sort((a, b) => a - b);
    const half = Math.floor(sorted.length / 2);
    const median = sorted.length % 2 ? sorted[half] : (sorted[half - 1] + sorted[half]) / 2;
    $("histogram-caption").textContent =
      `Predicted 12 + log(O/H) of ${values.length} galaxies ` +
      `(median ${median.toFixed(3)}; ${rows.length - values.length} rows without a value).`;
  }
  figure.hidden = false;
}

const zone = $("batch-drop");
zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  if (e.dataTransfer.files.length) submit(e.dataTransfer.files[0]);
});
$("batch-input").addEventListener("change", (e) => {
  if (e.target.files.length) submit(e.target.files[0]);
  e.target.value = ""; // choosing the same file again submits it again
});
