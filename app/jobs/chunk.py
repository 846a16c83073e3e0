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
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from galmet.app import cache
from galmet.app.errors import ApiError, blank_cutout_error
from galmet.app.identify import Located
from galmet.app.jobs.store import close_job_if_done, now
from galmet.app.metrics import JOB_TARGETS
from galmet.app.models import Job, JobChunk, JobTarget
from galmet.app.predictions import Predictions, check_something_there
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
    job, targets, total = await predictions.db.run(_begin, job_id, chunk)
    if job is None:
        log.warning("job %s is gone; chunk %d dropped", job_id, chunk, extra=extra)
        return out
    out.skipped = total - len(targets)
    heartbeat = asyncio.create_task(_heartbeat(predictions, job_id, chunk))
    try:
        results = await _answer(predictions, job, targets, out)
        out.job_finished = await predictions.db.run(_finish, job_id, chunk, results)
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
@dataclass
class _Result:
    """A target's outcome: ``(status, reason, cached, prediction_id)``, and the SDSS object
    at its position."""

    status: str
    reason: str | None = None
    cached: bool | None = None
    prediction_id: int | None = None
    located: Located | None = None


async def _answer(
    predictions: Predictions, job: Job, targets: list[JobTarget], out: ChunkOutcome
) -> dict[int, _Result]:
    model = predictions.model
    results: dict[int, _Result] = {}
    if job.model_version != model.version:
        reason = (
            f"this worker runs model {model.version[:12]}, the job was submitted for "
            f"{job.model_version[:12]}: run workers with the API's checkpoint"
        )
        for t in targets:
            results[t.id] = _Result("failed", reason)
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
    hits = await predictions.db.run(_cached, [(t.id, *centres[t.id]) for t in targets], job)
    for target_id, (prediction_id, flags) in hits.items():
        try:
            check_something_there(flags, located[target_id])
        except ApiError as error:
            results[target_id] = _Result("failed", f"{error.status}: {error.detail}")
            out.failed += 1
            continue
        results[target_id] = _Result("done", cached=True, prediction_id=prediction_id)
        out.cached += 1
    todo = [t for t in targets if t.id not in hits]
    out.cache_seconds = time.perf_counter() - clock
    # Each target's cutout geometry: the model's one, or (petro) from its object's radius.
    geometry: dict[int, tuple[int, float]] = {}
    for t in todo:
        try:
            geometry[t.id] = predictions.geometry(located[t.id])
        except ApiError as error:
            results[t.id] = _Result("failed", f"{error.status}: {error.detail}")
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
                results[target_id] = _Result("failed", f"{error.status}: {error.detail}")
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
        stored = await predictions.db.run(_store, ready, records, job, centres)
        out.store_seconds = time.perf_counter() - clock
        for t, _ in ready:
            results[t.id] = _Result("done", cached=False, prediction_id=stored[t.id])
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
        _cutouts, [(t.id, *centres[t.id], *geometry[t.id]) for t in targets]
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
            await predictions.db.run(_touch, job_id, chunk)
        except Exception:  # a missed beat is harmless; the next one may get through
            log.warning("heartbeat of chunk %d of job %s failed", chunk, job_id, exc_info=True)


# ---------------------------------------------------------------------------- database steps
def _begin(session: Session, job_id: str, chunk: int) -> tuple[Job | None, list[JobTarget], int]:
    job = session.get(Job, job_id)
    if job is None:
        return None, [], 0
    stamp = now()
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk)
        .values(attempts=JobChunk.attempts + 1, heartbeat_at=stamp)
    )
    session.commit()
    rows = session.scalars(
        select(JobTarget)
        .where(JobTarget.job_id == job_id, JobTarget.chunk == chunk)
        .order_by(JobTarget.row)
    ).all()
    session.expunge_all()
    return job, [t for t in rows if t.status == "queued"], len(rows)


def _touch(session: Session, job_id: str, chunk: int) -> None:
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk)
        .values(heartbeat_at=now())
    )
    session.commit()


def _cached(
    session: Session, targets: list[tuple[int, float, float]], job: Job
) -> dict[int, tuple[int, list[str]]]:
    """Target id -> (id, flags) of the cached prediction at its centre, where there is one."""
    hits = {}
    for target_id, ra, dec in targets:
        row = cache.find_sky(session, ra, dec, job.model_version, job.tta)
        if row is not None:
            hits[target_id] = (row.id, list(row.flags))
    return hits


def _cutouts(session: Session, targets: list[tuple[int, float, float, int, float]]) -> dict:
    """Cached cutouts of ``(target id, ra, dec, size, scale)`` by target id."""
    found = {}
    for target_id, ra, dec, size, scale in targets:
        row = cache.get_cutout(session, ra, dec, scale, size)
        if row is not None:
            found[target_id] = row
    session.expunge_all()
    return found


def _store(
    session: Session,
    ready: list,
    records: list[dict],
    job: Job,
    centres: dict[int, tuple[float, float]],
) -> dict[int, int]:
    items = [
        {
            "model_version": job.model_version,
            "tta": job.tta,
            "flags": [] if centre_has_source(pixels) else ["no_source_at_centre"],
            "ra": centres[t.id][0],
            "dec": centres[t.id][1],
            **record,
        }
        for (t, pixels), record in zip(ready, records, strict=True)
    ]
    rows = cache.store_predictions(session, items)
    return {t.id: row.id for (t, _), row in zip(ready, rows, strict=True)}


def _finish(session: Session, job_id: str, chunk: int, results: dict[int, _Result]) -> bool:
    """Record the outcomes (only over rows still queued) and close the chunk, and the job when
    this was its last queued work. Returns whether the job is finished."""
    table = JobTarget.__table__
    if results:  # one executemany; only rows still queued, so a re-run changes nothing
        session.connection().execute(
            table.update()
            .where(table.c.id == bindparam("t_id"), table.c.status == "queued")
            .values(
                status=bindparam("t_status"),
                reason=bindparam("t_reason"),
                cached=bindparam("t_cached"),
                prediction_id=bindparam("t_prediction"),
                object_status=bindparam("t_object"),
                obj_id=bindparam("t_obj_id"),
                obj_type=bindparam("t_obj_type"),
                separation_arcsec=bindparam("t_separation"),
            ),
            [
                {
                    "t_id": target_id,
                    "t_status": r.status,
                    "t_reason": r.reason,
                    "t_cached": r.cached,
                    "t_prediction": r.prediction_id,
                    "t_object": r.located.status if r.located else None,
                    "t_obj_id": r.located.obj.objID if r.located and r.located.obj else None,
                    "t_obj_type": r.located.obj.type if r.located and r.located.obj else None,
                    "t_separation": (
                        r.located.obj.separation_arcsec if r.located and r.located.obj else None
                    ),
                }
                for target_id, r in results.items()
            ],
        )
    stamp = now()
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk)
        .values(finished_at=stamp, heartbeat_at=stamp)
    )
    session.commit()
    # Only after the commit: two chunks finishing together on PostgreSQL (read committed)
    # would each count the other's rows as still queued inside their own transactions,
    # and neither would close the job. The last chunk to commit sees every row answered.
    finished = close_job_if_done(session, job_id)
    session.commit()
    return finished
