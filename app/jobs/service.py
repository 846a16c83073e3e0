"""Batch jobs as the API offers them: submit a target list, read its status and results."""

from __future__ import annotations

import logging
from typing import BinaryIO

from sqlalchemy.orm import Session

from galmet.app.core.config import Settings
from galmet.app.db import Database
from galmet.app.errors import ApiError
from galmet.app.jobs import store
from galmet.app.jobs.executors import CeleryJobs, InProcessJobs
from galmet.app.model_info import LoadedModel
from galmet.app.predictions import Predictions
from galmet.app.targets import TargetsError, parse_targets, target_format

log = logging.getLogger("galmet.jobs")


class JobService:
    """Jobs of the API process: written to the database, run by an executor (Celery workers
    when ``GALMET_BROKER_URL`` is set, else this process)."""

    def __init__(self, settings: Settings, db: Database, predictions: Predictions) -> None:
        self.settings = settings
        self.db = db
        self.model: LoadedModel = predictions.model
        self.executor: InProcessJobs | CeleryJobs = (
            CeleryJobs(db, settings) if settings.broker_url else InProcessJobs(predictions)
        )

    async def start(self) -> None:
        await self.executor.start()

    async def aclose(self) -> None:
        await self.executor.aclose()

    async def create_job(
        self, stream: BinaryIO, filename: str | None, content_type: str | None
    ) -> dict:
        """Parse (streaming), write and queue a job; returns its status document."""
        s, m = self.settings, self.model

        def write(session: Session):
            source = target_format(stream, filename, content_type)
            rows = parse_targets(stream, filename, content_type, s.max_job_targets)
            return store.insert_job(
                session,
                rows,
                model_version=m.version,
                tta=m.tta,
                chunk_size=s.job_chunk_size,
                source=source,
                filename=filename,
                notice=m.notice,
            )

        try:
            job = await self.db.run(write)
        except TargetsError as exc:
            raise ApiError(exc.status, str(exc)) from None
        try:
            await self.executor.submit([(job.id, c) for c in range(job.n_chunks)])
        except Exception as exc:
            await self.db.run(store.delete_job, job.id)
            raise ApiError(503, f"the job could not be queued: {exc}".splitlines()[0]) from None
        log.info(
            "job %s: %d targets in %d chunks",
            job.id,
            job.n_targets,
            job.n_chunks,
            extra={"job_id": job.id},
        )
        return await self.job_status(job.id)

    async def job_status(self, job_id: str) -> dict:
        status = await self.db.run(store.job_status, job_id)
        if status is None:
            raise ApiError(404, f"no job {job_id}")
        return status

    async def job_results(self, job_id: str) -> tuple[dict, list[dict]]:
        """The job's status and one result dict per input row."""
        status = await self.job_status(job_id)
        return status, await self.db.run(store.job_results, job_id)

    async def depth(self) -> int | None:
        """Chunks waiting (None when the broker does not answer)."""
        return await self.executor.depth()

    async def check(self) -> str:
        """The broker's readiness, for /readyz."""
        return await self.executor.check()
