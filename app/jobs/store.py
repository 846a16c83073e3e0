"""Batch jobs in the database: writing a job, reading its status and results.

A job's rows are written once, all together, when it is submitted (a bad row is kept as
``invalid`` with its reason; a file over the cap writes nothing). Its valid rows are cut into
chunks of ``GALMET_JOB_CHUNK_SIZE``; ``galmet.app.jobs.chunk`` answers a chunk, the executors
(``galmet.app.jobs.executors``) decide where it runs. Plain synchronous SQLAlchemy: callers
run these through ``Database.run``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from galmet.app.models import Job, JobChunk, JobTarget, Prediction
from galmet.app.targets import TargetRow
from galmet.objects import object_flags
from galmet.record import VALUE_FIELDS, public_fields

_INSERT_BATCH = 2000  # rows per INSERT while a job is written


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------- writing a job
def insert_job(
    session: Session,
    rows: Iterable[TargetRow],
    *,
    model_version: str,
    tta: int,
    chunk_size: int,
    source: str,
    filename: str | None,
    notice: str | None = None,
) -> Job:
    """Write a job and all its rows in one transaction (nothing is written if ``rows`` raises
    part-way, e.g. a file over the cap). Each row's input cells are kept, and the input's
    columns (in order of first appearance) with the job, so the results give the user's table
    back. ``notice`` is the model's caveat (the demo's), repeated in every results file.
    Returns the job, committed."""
    job_id = str(uuid.uuid4())
    session.add(
        Job(
            id=job_id,
            model_version=model_version,
            tta=tta,
            n_targets=0,
            n_chunks=0,
            source=source,
            filename=filename,
            notice=notice,
        )
    )
    session.flush()
    n_rows = n_valid = 0
    columns: dict[str, None] = {}  # an ordered set
    pending: list[dict[str, Any]] = []
    try:
        for r in rows:
            n_rows += 1
            valid = r.error is None
            pending.append(
                {
                    "job_id": job_id,
                    "row": r.row,
                    "chunk": n_valid // chunk_size if valid else None,
                    "target_id": r.id,
                    "ra": r.ra,
                    "dec": r.dec,
                    "status": "queued" if valid else "invalid",
                    "reason": r.error,
                    "input_cells": r.cells,
                }
            )
            columns.update(dict.fromkeys(r.cells or ()))
            n_valid += valid
            if len(pending) >= _INSERT_BATCH:
                session.execute(insert(JobTarget), pending)
                pending = []
        if pending:
            session.execute(insert(JobTarget), pending)
        n_chunks = -(-n_valid // chunk_size)
        stamp = now()
        if n_chunks:
            session.execute(
                insert(JobChunk),
                [{"job_id": job_id, "chunk": c, "enqueued_at": stamp} for c in range(n_chunks)],
            )
        job = session.get(Job, job_id)
        job.n_targets, job.n_chunks = n_rows, n_chunks
        job.input_columns = list(columns)
        if n_chunks == 0:
            job.finished_at = stamp  # nothing valid to run: finished as submitted
        session.commit()
    except BaseException:
        session.rollback()
        raise
    session.refresh(job)
    session.expunge(job)
    return job


def delete_job(session: Session, job_id: str) -> None:
    """Remove a job that could not be queued (its rows and chunks go with it)."""
    for model in (JobTarget, JobChunk):
        session.execute(model.__table__.delete().where(model.job_id == job_id))
    session.execute(Job.__table__.delete().where(Job.id == job_id))
    session.commit()


# ---------------------------------------------------------------------------- reading a job
def job_status(session: Session, job_id: str) -> dict | None:
    """The job's status document, or None for an unknown id."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    counts = dict.fromkeys(("queued", "done", "failed", "invalid"), 0)
    for status, n in session.execute(
        select(JobTarget.status, func.count())
        .where(JobTarget.job_id == job_id)
        .group_by(JobTarget.status)
    ):
        counts[status] = n
    started = session.scalar(
        select(func.count())
        .select_from(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.attempts > 0)
    )
    answered = job.n_targets - counts["queued"]
    if job.finished_at is not None:
        state = "done"
    elif started or counts["done"] or counts["failed"]:
        state = "running"
    else:
        state = "queued"
    return {
        "id": job.id,
        "status": state,
        "n_targets": job.n_targets,
        "counts": counts,
        "progress": answered / job.n_targets if job.n_targets else 1.0,
        "n_chunks": job.n_chunks,
        "model_version": job.model_version,
        "tta": job.tta,
        "source": job.source,
        "filename": job.filename,
        "notice": job.notice,
        "input_columns": job.input_columns or [],
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def job_results(session: Session, job_id: str) -> list[dict]:
    """One dict per input row, in input order (the ``galmet.app.results`` contract), with
    the input row's cells under ``"input"``."""
    rows = session.execute(
        select(JobTarget, Prediction)
        .outerjoin(Prediction, Prediction.id == JobTarget.prediction_id)
        .where(JobTarget.job_id == job_id)
        .order_by(JobTarget.row)
    )
    out = []
    for t, p in rows:
        values = {
            "row": t.row,
            "id": t.target_id,
            "ra": t.ra,
            "dec": t.dec,
            "status": t.status,
            "objID": t.obj_id,
            "type": t.obj_type,
            "separation_arcsec": t.separation_arcsec,
            **dict.fromkeys(VALUE_FIELDS),
            "oh_tta_spread": None,
            "ood_score": None,
            "cached": t.cached,
            "flags": [],
            "reason": t.reason,
            "input": t.input_cells or {},
        }
        if p is not None:
            fields = public_fields(p.outputs, p.sigma, p.tta_spread, p.ood_score)
            values.update({k: fields[k] for k in VALUE_FIELDS})
            values["oh_tta_spread"] = fields["tta_spread"].get("oh_p50")
            values["ood_score"] = fields["ood_score"]
            values["flags"] = list(p.flags)
        values["flags"] += object_flags(t.object_status, t.obj_type)
        out.append(values)
    return out


def unfinished_chunks(session: Session) -> list[tuple[str, int]]:
    """Every chunk not yet finished, oldest job first."""
    found = session.execute(
        select(JobChunk.job_id, JobChunk.chunk)
        .join(Job, Job.id == JobChunk.job_id)
        .where(JobChunk.finished_at.is_(None))
        .order_by(Job.created_at, JobChunk.chunk)
    )
    return [(job_id, chunk) for job_id, chunk in found]


def close_job_if_done(session: Session, job_id: str) -> bool:
    """Stamp the job finished when none of its targets is queued any more (not committed).
    Returns whether it is finished."""
    left = session.scalar(
        select(func.count())
        .select_from(JobTarget)
        .where(JobTarget.job_id == job_id, JobTarget.status == "queued")
    )
    if left == 0:
        session.execute(
            update(Job).where(Job.id == job_id, Job.finished_at.is_(None)).values(finished_at=now())
        )
    return left == 0
