"""What a service process runs, put together: the composition root of ``galmet.app``.

``Runtime.start(settings)`` migrates and connects the database, loads the model, starts the
inference engine and the SkyServer client, and (in the API) the batch-job executor. The
routes use its parts through ``galmet.app.api.deps``; a Celery worker process holds one too
(``role="worker"``: no migrations, which the API or compose's migrate step applies and
workers would race on, and no job executor). ``galmet predict --targets`` holds one with
``role="local"``: migrations, no executor (it runs its job's chunks itself).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Literal

from anyio import to_thread

from galmet.app import db as database
from galmet.app.core.config import Settings
from galmet.app.identify import Identifier
from galmet.app.jobs.service import JobService
from galmet.app.metrics import observe_batch
from galmet.app.model_info import LoadedModel, load_model
from galmet.app.predictions import Predictions
from galmet.engine import InferenceEngine
from galmet.skyserver import SkyServerClient

log = logging.getLogger("galmet.service")


@dataclass
class Runtime:
    """The started parts of one service process; ``aclose`` when done."""

    settings: Settings
    db: database.Database
    model: LoadedModel
    engine: InferenceEngine
    skyserver: SkyServerClient
    predictions: Predictions
    jobs: JobService | None  # None in a worker process

    @classmethod
    async def start(
        cls, settings: Settings, role: Literal["api", "worker", "local"] = "api"
    ) -> Runtime:
        if role != "worker":
            await to_thread.run_sync(database.upgrade, settings.database_url)
        db = database.Database(settings.database_url)
        model = await load_model(settings)
        engine = InferenceEngine(
            model.predictor(),
            batch_size=settings.batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            tta=model.tta,
            on_batch=observe_batch,
            max_queue=settings.max_queue,
        )
        await engine.start()
        skyserver = SkyServerClient(
            settings.skyserver_url,
            timeout=settings.skyserver_timeout,
            retries=settings.skyserver_retries,
            rate=settings.skyserver_rate,
            concurrency=settings.fetch_concurrency,
        )
        identifier = Identifier(settings, db, skyserver)
        predictions = Predictions(settings, db, model, engine, skyserver, identifier)
        jobs = JobService(settings, db, predictions) if role == "api" else None
        if jobs is not None:
            await jobs.start()
        log.info(
            "model %s (%s) on %s, TTA %d, database %s",
            model.name,
            model.version[:12],
            model.device,
            model.tta,
            database.safe_url(settings.database_url),
        )
        # Measured: a full garbage collection walks every object of torch, the web stack and
        # the model (~470,000: a pause of ~175 ms, every few thousand requests), which set the
        # p99 of answers from the database at ~190 ms; frozen, what exists now (long-lived) is
        # no longer walked.
        gc.collect()
        gc.freeze()
        return cls(settings, db, model, engine, skyserver, predictions, jobs)

    async def aclose(self) -> None:
        gc.unfreeze()  # what this runtime held can be collected again once it is dropped
        if self.jobs is not None:
            await self.jobs.aclose()
        await self.engine.aclose()
        await self.skyserver.aclose()
        await to_thread.run_sync(self.db.dispose)

    async def readiness(self) -> dict[str, str]:
        """/readyz: the model, the database and the broker, each ``ok`` or why not."""
        return {
            "model": "ok",
            "database": await self.db.check(),
            "broker": await self.jobs.check() if self.jobs else "not used by a worker",
        }
