"""The Celery task of ``galmet worker``: run one chunk of a batch job.

Each worker process holds one ``Service`` (the model loaded once, on the GPU when present,
its inference engine, a database connection pool and a SkyServer client) and one event loop
that runs the chunks, created on the process's first task. The chunk code is
``worker.chunk.run_chunk``, exactly what the API runs in-process when there is no broker.
"""

from __future__ import annotations

import asyncio
import logging
import os

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.exc import DBAPIError, OperationalError

from galmet.app.core.config import Settings
from galmet.app.service import Service
from galmet.worker.celery_app import TASK_NAME, make_celery
from galmet.worker.chunk import run_chunk

log = logging.getLogger("galmet.worker")

#: Failures worth running the whole chunk again later (the database restarting, say);
#: SkyServer failures are retried per cutout by the client and end as a failed row instead.
RETRY_ON = (OperationalError, DBAPIError, ConnectionError, TimeoutError)
MAX_RETRIES = 5

_settings: Settings | None = None
_runtime: tuple[asyncio.AbstractEventLoop, Service] | None = None


def runtime() -> tuple[asyncio.AbstractEventLoop, Service]:
    """This process's event loop and started ``Service`` (created on first use)."""
    global _runtime
    if _runtime is None:
        if _settings is None:
            raise RuntimeError("galmet.worker.tasks.make_worker_app was not called")
        loop = asyncio.new_event_loop()
        service = Service(_settings)
        loop.run_until_complete(service.start(worker=True))
        _runtime = (loop, service)
        m = service.model
        log.info(
            "worker process %d ready: model %s (%s) on %s, TTA %d by default",
            os.getpid(),
            m.name,
            m.version[:12],
            service.device,
            service.tta,
        )
    return _runtime


def make_worker_app(settings: Settings) -> Celery:
    """The Celery app with the chunk task registered, for ``galmet worker``."""
    global _settings
    _settings = settings
    app = make_celery(settings.broker_url)

    @app.task(
        name=TASK_NAME,
        bind=True,
        autoretry_for=RETRY_ON,
        max_retries=MAX_RETRIES,
        retry_backoff=2,
        retry_backoff_max=60,
    )
    def run_chunk_task(self, job_id: str, chunk: int) -> dict:
        loop, service = runtime()
        out = loop.run_until_complete(run_chunk(service, job_id, chunk))
        return {"job_id": job_id, "chunk": chunk, "predicted": out.predicted}

    return app


@worker_process_init.connect
def _load_at_start(**_) -> None:
    # Load the model when the process starts, not inside the first chunk: the first chunk is
    # then as fast as the rest, and a broken checkpoint shows in the log at once.
    if _settings is not None:
        from galmet.app.metrics import serve_worker_metrics

        serve_worker_metrics(_settings.worker_metrics_port)
        runtime()


@worker_process_shutdown.connect
def _close(**_) -> None:
    global _runtime
    if _runtime is not None:
        loop, service = _runtime
        loop.run_until_complete(service.aclose())
        loop.close()
        _runtime = None
