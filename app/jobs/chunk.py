"""One chunk of a batch job: the unit of work of both executors.

``run_chunk(predictions, job_id, chunk)`` is the same code whether a Celery worker runs it
(its process holds ``Predictions`` of its own) or the API runs it in-process (no broker): targets
already answered are skipped, cached predictions are taken from the cache without touching
SkyServer or the model, the missing cutouts are fetched concurrently (the SkyServer client
bounds concurrency and rate and retries upstream failures), all the chunk's images go through
the inference engine together (one batched TTA forward pass per ``batch_size`` images), and
each result is upserted and its target pointed at it. Every write is idempotent, so a chunk
re-run after a lost worker or a lost message leaves each row exactly once, with the same
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from anyio import to_thread

from galmet.app import cache
from galmet.app.errors import ApiError, blank_cutout_error
from galmet.app.jobs import chunk_rows
from galmet.app.jobs.chunk_rows import TargetResult
from galmet.app.metrics import JOB_TARGETS
from galmet.app.models import Job, JobTarget
from galmet.app.predictions import Predictions, check_something_there
from galmet.app.targets.rows import given_petro_radius
from galmet.images import centre_has_source, decode_image

log = logging.getLogger("galmet.jobs")


@dataclass
class ChunkOutcome:
    """What one run of a chunk did (for logs, metrics and tests)."""

    job_id: str
    chunk: int
    skipped: int = 0  # already answered by an earlier run
    cached: int = 0  # answered from the prediction cache
    predicted: int = 0  # run through the model
    failed: int = 0
    seconds: float = 0.0
    cache_seconds: float = 0.0  # looking up cached predictions
    fetch_seconds: float = 0.0  # cutouts: cache look-ups, SkyServer, decoding (overlaps inference)
    inference_seconds: float = 0.0
    store_seconds: float = 0.0  # writing predictions
    job_finished: bool = False


async def run_chunk(predictions: Predictions, job_id: str, chunk: int) -> ChunkOutcome:
    """Answer every queued target of chunk ``chunk`` of job ``job_id``; see the module doc."""
    started = time.perf_counter()
    out = ChunkOutcome(job_id, chunk)
    extra = {"job_id": job_id, "chunk": chunk}
    job, targets, total = await predictions.db.run(chunk_rows.begin, job_id, chunk)
    if job is None:
        log.warning("job %s is gone; chunk %d dropped", job_id, chunk, extra=extra)
        return out
    out.skipped = total - len(targets)
    heartbeat = asyncio.create_task(_heartbeat(predictions, job_id, chunk))
    try:
        results = await _answer(predictions, job, targets, out)
        out.job_finished = await predictions.db.run(chunk_rows.finish, job_id, chunk, results)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    out.seconds = time.perf_counter() - started
    for outcome in ("predicted", "cached", "failed"):
        JOB_TARGETS.labels(outcome).inc(getattr(out, outcome))
    log.info(
        "chunk %d of job %s: %d predicted, %d cached, %d failed, %d skipped in %.2f s",
        chunk,
        job_id,
        out.predicted,
        out.cached,
        out.failed,
        out.skipped,
        out.seconds,
        extra={
            **extra,
            "predicted": out.predicted,
            "cached": out.cached,
            "failed": out.failed,
            "seconds": {
                k: round(getattr(out, f"{k}_seconds"), 3)
                for k in ("cache", "fetch", "inference", "store")
            },
        },
    )
    if out.job_finished:
        log.info("job %s finished", job_id, extra={"job_id": job_id})
    return out


# ---------------------------------------------------------------------------- the work
async def _answer(
    predictions: Predictions, job: Job, targets: list[JobTarget], out: ChunkOutcome
) -> dict[int, TargetResult]:
    model = predictions.model
    results: dict[int, TargetResult] = {}
    if job.model_version != model.version:
        reason = (
            f"this worker runs model {model.version[:12]}, the job was submitted for "
            f"{job.model_version[:12]}: run workers with the API's checkpoint"
        )
        for t in targets:
            results[t.id] = TargetResult("failed", reason)
        out.failed = len(targets)
        return results

    # 1. Which SDSS object each target is (cached, else a few batched SQL queries), and the
    #    prediction cache at its centre, in one session: no cutouts, no model.
    clock = time.perf_counter()
    located = dict(
        zip(
            (t.id for t in targets),
            await predictions.identifier.locate([(t.ra, t.dec) for t in targets]),
            strict=True,
        )
    )
    centres = {i: loc.centre for i, loc in located.items()}
    wanted = [(t.id, *centres[t.id]) for t in targets]
    hits = await predictions.db.run(chunk_rows.cached, wanted, job)
    for target_id, (prediction_id, flags) in hits.items():
        try:
            check_something_there(flags, located[target_id])
        except ApiError as error:
            results[target_id] = TargetResult("failed", f"{error.status}: {error.detail}")
            out.failed += 1
            continue
        results[target_id] = TargetResult("done", cached=True, prediction_id=prediction_id)
        out.cached += 1
    todo = [t for t in targets if t.id not in hits]
    out.cache_seconds = time.perf_counter() - clock
    # Each target's cutout geometry: the model's one, or (petro) from its object's radius,
    # else the row's own petroR90_r column.
    geometry: dict[int, tuple[int, float]] = {}
    for t in todo:
        try:
            given = given_petro_radius(t.input_cells) if model.scale_mode == "petro" else None
            geometry[t.id] = predictions.geometry(located[t.id], given)
        except ValueError as error:
            results[t.id] = TargetResult("failed", f"422: {error}")
            out.failed += 1
        except ApiError as error:
            results[t.id] = TargetResult("failed", f"{error.status}: {error.detail}")
            out.failed += 1
    todo = [t for t in todo if t.id in geometry]

    # 2. Cutouts and the model, pipelined in parts of one engine batch: while one part is in
    #    the model, the next part's cutouts download.
    size = max(1, predictions.settings.batch_size)
    parts = [todo[i : i + size] for i in range(0, len(todo), size)]
    ready: list[tuple[JobTarget, np.ndarray]] = []
    records: list[dict] = []
    upcoming = (
        asyncio.create_task(_images(predictions, parts[0], centres, geometry)) if parts else None
    )
    try:
        for k in range(len(parts)):
            part_ready, failures, seconds = await upcoming
            upcoming = (
                asyncio.create_task(_images(predictions, parts[k + 1], centres, geometry))
                if k + 1 < len(parts)
                else None
            )
            out.fetch_seconds += seconds
            for t, pixels in list(part_ready):
                flags = [] if centre_has_source(pixels) else ["no_source_at_centre"]
                try:
                    check_something_there(flags, located[t.id])
                except ApiError as error:
                    failures[t.id] = error
                    part_ready.remove((t, pixels))
            for target_id, error in failures.items():
                results[target_id] = TargetResult("failed", f"{error.status}: {error.detail}")
            out.failed += len(failures)
            if part_ready:
                clock = time.perf_counter()
                records += await predictions.predict_images([p for _, p in part_ready], job.tta)
                out.inference_seconds += time.perf_counter() - clock
                ready += part_ready
    finally:
        if upcoming is not None:
            upcoming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upcoming
    if ready:
        # 3. Idempotent upserts, one transaction for the chunk.
        clock = time.perf_counter()
        stored = await predictions.db.run(chunk_rows.store, ready, records, job, centres)
        out.store_seconds = time.perf_counter() - clock
        for t, _ in ready:
            results[t.id] = TargetResult("done", cached=False, prediction_id=stored[t.id])
        out.predicted = len(ready)
    for target_id, result in results.items():
        result.located = located[target_id]
    return results


async def _images(
    predictions: Predictions,
    targets: list[JobTarget],
    centres: dict[int, tuple[float, float]],
    geometry: dict[int, tuple[int, float]],
) -> tuple[list[tuple[JobTarget, np.ndarray]], dict[int, ApiError], float]:
    """Decoded cutouts of ``targets`` at the model's input size: the cached ones read in one
    session (and decoded once), the rest fetched concurrently (the client bounds how many at
    once; it decoded them already) and stored in one transaction. Returns (target, pixels)
    pairs, the failures by target id, and the seconds taken."""
    clock = time.perf_counter()
    model = predictions.model
    rows = await predictions.db.run(
        chunk_rows.cutouts, [(t.id, *centres[t.id], *geometry[t.id]) for t in targets]
    )
    missing = [t for t in targets if t.id not in rows]

    async def fetch(t: JobTarget):
        try:
            return await predictions.fetch_cutout(*centres[t.id], *geometry[t.id])
        except ApiError as exc:
            return exc

    answers = await asyncio.gather(*map(fetch, missing))
    fetched = {t.id: got for t, got in zip(missing, answers, strict=True)}
    failures = {i: got for i, got in fetched.items() if isinstance(got, ApiError)}
    good = [(t, fetched[t.id]) for t in missing if t.id not in failures]
    if good:
        items = [(*centres[t.id], *geometry[t.id][::-1], c.jpeg, c.blank) for t, c in good]
        await predictions.db.run(cache.store_cutouts, items)

    def pixels(t: JobTarget) -> np.ndarray | None:
        """The model's input for a target; None for a blank cutout."""
        if t.id in fetched:
            got = fetched[t.id]
            return None if got.blank else decode_image(got.pixels, model.input_size)
        row = rows[t.id]
        return None if row.blank else decode_image(row.jpeg, model.input_size)

    def decode_all() -> list[tuple[JobTarget, np.ndarray | None | ApiError]]:
        out = []
        for t in targets:
            if t.id in failures:
                continue
            try:
                out.append((t, pixels(t)))
            except ValueError as exc:  # a cached cutout that will not decode
                out.append((t, ApiError(502, f"SkyServer sent an unreadable cutout: {exc}")))
        return out

    ready = []
    for t, got in await to_thread.run_sync(decode_all):
        if isinstance(got, ApiError):
            failures[t.id] = got
        elif got is None:
            failures[t.id] = blank_cutout_error(*centres[t.id])
        else:
            ready.append((t, got))
    return ready, failures, time.perf_counter() - clock


async def _heartbeat(predictions: Predictions, job_id: str, chunk: int) -> None:
    """Tell the API this chunk is alive, so it is not sent again while it runs."""
    interval = max(predictions.settings.job_stall_seconds / 3, 0.05)
    while True:
        await asyncio.sleep(interval)
        try:
            await predictions.db.run(chunk_rows.touch, job_id, chunk)
        except Exception:  # a missed beat is harmless; the next one may get through
            log.warning("heartbeat of chunk %d of job %s failed", chunk, job_id, exc_info=True)


# ---------------------------------------------------------------------------- database steps
