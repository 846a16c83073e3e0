"""Where a job's chunks run: in the API's own event loop, or on Celery workers.

- ``CeleryJobs`` (``GALMET_BROKER_URL`` set): one Celery message per chunk, run by
  ``galmet worker`` processes. A sweeper in the API sends a chunk again when its message or
  its worker was lost (a Redis restart without persistence, a killed worker): a chunk nobody
  has touched for ``GALMET_JOB_STALL_SECONDS`` while the queue is empty, or whose runner has
  stopped beating for that long.
- ``InProcessJobs`` (no broker): the API's own event loop runs the chunks, a few at a time,
  through the same micro-batching engine as single predictions; unfinished jobs are resumed
  when the service starts again.

Both run ``galmet.app.jobs.chunk.run_chunk``, whose writes are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from anyio import to_thread

from galmet.app.broker import QUEUE, TASK_NAME, make_celery
from galmet.app.core.config import Settings
from galmet.app.db import Database
from galmet.app.jobs.chunk import run_chunk
from galmet.app.jobs.recovery import MAX_ATTEMPTS, give_up, mark_enqueued, stalled_chunks
from galmet.app.jobs.store import unfinished_chunks
from galmet.app.predictions import Predictions

log = logging.getLogger("galmet.jobs")


class InProcessJobs:
    """Runs chunks on the API's event loop, ``concurrency`` at a time (so one chunk's
    cutouts download while another's images are in the model)."""

    def __init__(self, predictions: Predictions, concurrency: int = 2) -> None:
        self.predictions = predictions
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        chunks = await self.predictions.db.run(unfinished_chunks)
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
                await run_chunk(self.predictions, job_id, chunk)
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

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.celery = make_celery(settings.broker_url)
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
        stall = self.settings.job_stall_seconds
        chunks = await self.db.run(stalled_chunks, stall, depth == 0)
        dead = await self.db.run(give_up, chunks, MAX_ATTEMPTS)
        if dead:
            log.error("giving up on %d chunks that never finished: %s", len(dead), dead)
        chunks = [c for c in chunks if c not in dead]
        if chunks:
            log.warning("sending %d lost chunks again", len(chunks))
            await self.db.run(mark_enqueued, chunks)
            await self.submit(chunks)
        return len(chunks)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_sweep_seconds)
            try:
                await self.sweep()
            except Exception:
                log.warning("the job sweeper failed; it will try again", exc_info=True)
