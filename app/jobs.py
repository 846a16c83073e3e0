"""Batch jobs: create one from a target list, run its chunks, report status and results.

A job's rows are written once, all together, when it is submitted (a bad row is kept as
``invalid`` with its reason; a file over the cap writes nothing). Its valid rows are cut into
chunks of ``GALMET_JOB_CHUNK_SIZE`` and each chunk is handed to an executor:

- ``CeleryJobs`` (``GALMET_BROKER_URL`` set): one Celery message per chunk, run by
  ``galmet worker`` processes. A sweeper in the API sends a chunk again when its message or
  its worker was lost (a Redis restart without persistence, a killed worker): a chunk nobody
  has touched for ``GALMET_JOB_STALL_SECONDS`` while the queue is empty, or whose runner has
  stopped beating for that long.
- ``InProcessJobs`` (no broker): the API's own event loop runs the chunks, a few at a time,
  through the same micro-batching engine as single predictions; unfinished jobs are resumed
  when the service starts again.

Both run ``worker.chunk.run_chunk``, whose writes are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from galmet.app.models import Job, JobChunk, JobTarget, Prediction
from galmet.app.targets import TargetRow
from galmet.worker.celery_app import QUEUE, TASK_NAME
from galmet.worker.chunk import close_job_if_done, now, run_chunk

if TYPE_CHECKING:
    from galmet.app.service import Service

log = logging.getLogger("galmet.jobs")

_INSERT_BATCH = 2000  # rows per INSERT while a job is written
#: A chunk started this often without finishing is given up: its targets end failed.
MAX_ATTEMPTS = 5


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
) -> Job:
    """Write a job and all its rows in one transaction (nothing is written if ``rows`` raises
    part-way, e.g. a file over the cap). Returns the job, committed."""
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
        )
    )
    session.flush()
    n_rows = n_valid = 0
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
                }
            )
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
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def job_results(session: Session, job_id: str) -> list[dict]:
    """One dict per input row, in input order (the ``app.results`` contract)."""
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
            "oh_p50": None,
            "oh_sigma": None,
            "oh_p16": None,
            "oh_p84": None,
            "log_mstar": None,
            "log_mstar_sigma": None,
            "oh_tta_spread": None,
            "cached": t.cached,
            "flags": [],
            "reason": t.reason,
        }
        if p is not None:
            oh, sigma = p.outputs.get("oh_p50"), p.sigma.get("oh_p50")
            values.update(
                oh_p50=oh,
                oh_sigma=sigma,
                oh_p16=None if oh is None else oh - sigma,
                oh_p84=None if oh is None else oh + sigma,
                log_mstar=p.outputs.get("lgm_tot_p50"),
                log_mstar_sigma=p.sigma.get("lgm_tot_p50"),
                oh_tta_spread=p.tta_spread.get("oh_p50"),
                flags=list(p.flags),
            )
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


# ---------------------------------------------------------------------------- executors
class InProcessJobs:
    """Runs chunks on the API's event loop, ``concurrency`` at a time (so one chunk's
    cutouts download while another's images are in the model)."""

    def __init__(self, service: Service, concurrency: int = 2) -> None:
        self.service = service
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        chunks = await self.service.run_db(unfinished_chunks)
        if chunks:
            log.info("resuming %d unfinished chunks", len(chunks))
            await self.submit(chunks)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def submit(self, chunks: list[tuple[str, int]]) -> None:
        for job_id, chunk in chunks:
            task = asyncio.create_task(self._run(job_id, chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str, chunk: int) -> None:
        async with self._slots:
            try:
                await run_chunk(self.service, job_id, chunk)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Left unfinished: resumed at the next start. Logged with its ids.
                log.exception(
                    "chunk %d of job %s failed",
                    chunk,
                    job_id,
                    extra={"job_id": job_id, "chunk": chunk},
                )

    async def depth(self) -> int:
        """Chunks waiting or running."""
        return len(self._tasks)

    async def check(self) -> str:
        return "not used (in-process inference)"


class CeleryJobs:
    """Sends chunks to ``galmet worker`` processes through the broker, and sends again the
    ones that were lost."""

    def __init__(self, service: Service, broker_url: str) -> None:
        from galmet.worker.celery_app import make_celery

        self.service = service
        self.celery = make_celery(broker_url)
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="galmet-job-sweeper")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await to_thread.run_sync(self.celery.close)

    async def submit(self, chunks: list[tuple[str, int]]) -> None:
        await to_thread.run_sync(self._send, chunks)

    def _send(self, chunks: list[tuple[str, int]]) -> None:
        # One producer connection for the lot; a broker that does not answer fails fast.
        with self.celery.producer_or_acquire() as producer:
            for job_id, chunk in chunks:
                self.celery.send_task(
                    TASK_NAME, args=[job_id, chunk], queue=QUEUE, producer=producer, retry=False
                )

    def _depth_now(self) -> int:
        from amqp.exceptions import ChannelError

        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            try:
                return conn.default_channel.queue_declare(QUEUE, passive=True).message_count
            except ChannelError as exc:
                if "NOT_FOUND" not in str(exc):  # kombu's Redis transport sets no reply code
                    raise
                return 0  # never declared, or gone with a Redis restart: nothing waits

    async def depth(self) -> int | None:
        """Messages waiting in the broker queue (None when the broker does not answer)."""
        try:
            return await to_thread.run_sync(self._depth_now)
        except Exception:
            return None

    async def check(self) -> str:
        def ping() -> str:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return "ok"

        try:
            return await to_thread.run_sync(ping)
        except Exception as exc:  # any failure means "not ready", with its reason
            return f"error: {exc}".splitlines()[0][:200]

    async def sweep(self) -> int:
        """Send again the chunks that were lost; returns how many."""
        depth = await self.depth()
        if depth is None:
            return 0  # the broker is down: nothing can be sent now anyway
        stall = self.service.settings.job_stall_seconds
        chunks = await self.service.run_db(stalled_chunks, stall, depth == 0)
        dead = await self.service.run_db(give_up, chunks, MAX_ATTEMPTS)
        if dead:
            log.error("giving up on %d chunks that never finished: %s", len(dead), dead)
        chunks = [c for c in chunks if c not in dead]
        if chunks:
            log.warning("sending %d lost chunks again", len(chunks))
            await self.service.run_db(mark_enqueued, chunks)
            await self.submit(chunks)
        return len(chunks)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.service.settings.job_sweep_seconds)
            try:
                await self.sweep()
            except Exception:
                log.warning("the job sweeper failed; it will try again", exc_info=True)
