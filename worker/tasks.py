"""The Celery task of ``galmet worker``: run one chunk of a batch job.

Each worker process holds one ``Runtime`` (the model loaded once, on the GPU when present,
its inference engine, a database connection pool and a SkyServer client) and one event loop
that runs the chunks, created when the process starts. The chunk code is
``galmet.app.jobs.chunk.run_chunk``, exactly what the API runs in-process when there is no
broker.
"""

from __future__ import annotations

import asyncio
import logging
import os

import torch
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.exc import DBAPIError, OperationalError

from galmet.app.broker import TASK_NAME, make_celery
from galmet.app.core.config import Settings
from galmet.app.jobs.chunk import run_chunk
from galmet.app.runtime import Runtime

log = logging.getLogger("galmet.worker")

#: Failures worth running the whole chunk again later (the database restarting, say);
#: SkyServer failures are retried per cutout by the client and end as a failed row instead.
RETRY_ON = (OperationalError, DBAPIError, ConnectionError, TimeoutError)
MAX_RETRIES = 5

_settings: Settings | None = None
_runtime: tuple[asyncio.AbstractEventLoop, Runtime] | None = None


def runtime() -> tuple[asyncio.AbstractEventLoop, Runtime]:
    """This process's event loop and started ``Runtime`` (created on first use)."""
    global _runtime
    if _runtime is None:
        if _settings is None:
            raise RuntimeError("galmet.worker.tasks.make_worker_app was not called")
        # A pool process forked from a parent that had touched CUDA cannot use the GPU
        # (torch's "bad fork"); the parent is written never to (galmet.worker.cli.preflight).
        bad_fork = torch.cuda._is_in_bad_fork()
        if bad_fork:
            log.error(
                "worker process %d was forked after its parent initialised CUDA: it cannot "
                "use the GPU (a bug: the parent must not touch torch.cuda before the fork)",
                os.getpid(),
            )
        loop = asyncio.new_event_loop()
        started = loop.run_until_complete(Runtime.start(_settings, role="worker"))
        _runtime = (loop, started)
        m = started.model
        log.info(
            "worker process %d ready: model %s (%s) on %s, TTA %d by default, cuda_bad_fork=%s",
            os.getpid(),
            m.name,
            m.version[:12],
            m.device,
            m.tta,
            bad_fork,
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
        loop, started = runtime()
        out = loop.run_until_complete(run_chunk(started.predictions, job_id, chunk))
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
        loop, started = _runtime
        loop.run_until_complete(started.aclose())
        loop.close()
        _runtime = None
