"""``galmet predict --targets FILE``: a batch job run in this process, without a server.

The same path as a submitted job (``galmet.app.jobs``): the list is parsed with the service's
row-by-row validation, written as a job to the service's database (``GALMET_DATABASE_URL``,
so its caches serve and keep the answers), and each chunk runs through
``galmet.app.jobs.chunk.run_chunk``, one after the other, with a progress bar. The results
are written as the service writes them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tqdm import tqdm

from galmet.app.core.config import Settings
from galmet.app.jobs import store
from galmet.app.jobs.chunk import run_chunk
from galmet.app.results import results_csv, results_json, results_meta
from galmet.app.results_tables import results_fits, results_votable
from galmet.app.runtime import Runtime
from galmet.app.targets import TargetsError, parse_targets, target_format
from galmet.errors import GalmetError

#: Results format by the output file's extension.
FORMATS = {
    ".csv": "csv",
    ".json": "json",
    ".vot": "votable",
    ".xml": "votable",
    ".fits": "fits",
    ".fit": "fits",
}


def output_path(targets: Path, out: Path | None) -> Path:
    """``--out``, else ``FILE.galmet.csv`` beside the input (as ``galmet submit`` saves)."""
    return out or targets.with_name(f"{targets.stem}.galmet.csv")


def run(settings: Settings, targets: Path, out: Path, progress: bool = True) -> dict:
    """Predict every row of ``targets`` into ``out``; returns the job's status document."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise GalmetError(f"--out must end in {', '.join(FORMATS)}, not {out.name!r}")
    return asyncio.run(_run(settings, targets, out, fmt, progress))


async def _run(settings: Settings, targets: Path, out: Path, fmt: str, progress: bool) -> dict:
    runtime = await Runtime.start(settings, role="local")
    try:
        model = runtime.model

        def write(session):
            with targets.open("rb") as stream:
                source = target_format(stream, targets.name, None)
                rows = parse_targets(stream, targets.name, None, settings.max_job_targets)
                return store.insert_job(
                    session,
                    rows,
                    model_version=model.version,
                    tta=model.tta,
                    chunk_size=settings.job_chunk_size,
                    source=source,
                    filename=targets.name,
                    notice=model.notice,
                )

        try:
            job = await runtime.db.run(write)
        except TargetsError as exc:
            raise GalmetError(f"{targets}: {exc}") from None
        invalid = (await runtime.db.run(store.job_status, job.id))["counts"]["invalid"]
        with tqdm(total=job.n_targets, unit="target", desc="predict", disable=not progress) as bar:
            bar.update(invalid)  # answered as the job was written
            for chunk in range(job.n_chunks):
                outcome = await run_chunk(runtime.predictions, job.id, chunk)
                bar.update(outcome.predicted + outcome.cached + outcome.failed + outcome.skipped)
        status = await runtime.db.run(store.job_status, job.id)
        rows = await runtime.db.run(store.job_results, job.id)
        meta, columns = results_meta(status), status["input_columns"]
        if fmt in ("votable", "fits"):
            writer = results_votable if fmt == "votable" else results_fits
            out.write_bytes(writer(rows, meta, columns))
        else:
            writer = results_csv if fmt == "csv" else results_json
            out.write_text("".join(writer(rows, meta, columns)), newline="")
        return status
    finally:
        await runtime.aclose()
