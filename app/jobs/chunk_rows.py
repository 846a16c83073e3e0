"""A chunk's database work, each function one session (``Database.run``): claiming the
chunk's targets, the heartbeat, cache look-ups, storing predictions and recording each
target's outcome."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from galmet.app import cache
from galmet.app.identify import Located
from galmet.app.jobs.store import close_job_if_done, now
from galmet.app.models import Job, JobChunk, JobTarget
from galmet.images import centre_has_source


@dataclass
class TargetResult:
    """A target's outcome: ``(status, reason, cached, prediction_id)``, and the SDSS object
    at its position."""

    status: str
    reason: str | None = None
    cached: bool | None = None
    prediction_id: int | None = None
    located: Located | None = None


def begin(session: Session, job_id: str, chunk: int) -> tuple[Job | None, list[JobTarget], int]:
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


def touch(session: Session, job_id: str, chunk: int) -> None:
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk)
        .values(heartbeat_at=now())
    )
    session.commit()


def cached(
    session: Session, targets: list[tuple[int, float, float]], job: Job
) -> dict[int, tuple[int, list[str]]]:
    """Target id -> (id, flags) of the cached prediction at its centre, where there is one."""
    hits = {}
    for target_id, ra, dec in targets:
        row = cache.find_sky(session, ra, dec, job.model_version, job.tta)
        if row is not None:
            hits[target_id] = (row.id, list(row.flags))
    return hits


def cutouts(session: Session, targets: list[tuple[int, float, float, int, float]]) -> dict:
    """Cached cutouts of ``(target id, ra, dec, size, scale)`` by target id."""
    found = {}
    for target_id, ra, dec, size, scale in targets:
        row = cache.get_cutout(session, ra, dec, scale, size)
        if row is not None:
            found[target_id] = row
    session.expunge_all()
    return found


def store(
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


def finish(session: Session, job_id: str, chunk: int, results: dict[int, TargetResult]) -> bool:
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
