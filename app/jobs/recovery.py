"""Finding lost chunks: their runner stopped beating, or their message never arrived.

A chunk whose worker was killed, or whose message was lost with a Redis restart, is sent
again by the API's sweeper (``galmet.app.jobs.executors.CeleryJobs``); one started
``MAX_ATTEMPTS`` times without finishing is given up, its targets ``failed`` with the reason.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from galmet.app.jobs.store import close_job_if_done, now
from galmet.app.models import JobChunk, JobTarget

#: A chunk started this often without finishing is given up: its targets end failed.
MAX_ATTEMPTS = 5


def stalled_chunks(session: Session, stall_seconds: float, queue_empty: bool) -> list:
    """Chunks to send again: their runner stopped beating for ``stall_seconds``; or, when the
    queue is empty, sent that long ago and never picked up (the message was lost)."""
    cutoff = now() - timedelta(seconds=stall_seconds)
    lost_running = and_(JobChunk.heartbeat_at.is_not(None), JobChunk.heartbeat_at < cutoff)
    lost_queued = and_(JobChunk.heartbeat_at.is_(None), JobChunk.enqueued_at < cutoff)
    condition = or_(lost_running, lost_queued) if queue_empty else lost_running
    found = session.execute(
        select(JobChunk.job_id, JobChunk.chunk).where(JobChunk.finished_at.is_(None), condition)
    )
    return [(job_id, chunk) for job_id, chunk in found]


def give_up(session: Session, chunks: list[tuple[str, int]], max_attempts: int) -> list:
    """Of ``chunks``, those started ``max_attempts`` times already: their unanswered targets
    end ``failed`` (a chunk that kills its worker every time must not stall its job forever).
    Returns the chunks given up."""
    given_up = []
    for job_id, chunk in chunks:
        c = session.get(JobChunk, (job_id, chunk))
        if c is None or c.attempts < max_attempts:
            continue
        session.execute(
            update(JobTarget)
            .where(JobTarget.job_id == job_id, JobTarget.chunk == chunk)
            .where(JobTarget.status == "queued")
            .values(
                status="failed",
                reason=f"500: the chunk was started {c.attempts} times and never finished; "
                "see the worker logs",
            )
        )
        c.finished_at = now()
        close_job_if_done(session, job_id)
        given_up.append((job_id, chunk))
    session.commit()
    return given_up


def mark_enqueued(session: Session, chunks: list[tuple[str, int]]) -> None:
    """Stamp chunks as just sent: waiting for a runner again."""
    stamp = now()
    for job_id, chunk in chunks:
        session.execute(
            update(JobChunk)
            .where(JobChunk.job_id == job_id, JobChunk.chunk == chunk)
            .values(enqueued_at=stamp, heartbeat_at=None)
        )
    session.commit()
