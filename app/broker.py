"""The Celery app: broker settings that make a chunk survive a lost worker.

The API only sends messages (by task name); ``galmet worker`` processes register and run the
task (``galmet.worker.tasks``); nothing here imports the worker. Settings, and why:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after
  its chunk is done; a worker process killed mid-chunk gives the message back.
- ``worker_prefetch_multiplier=1``: a process holds no more than the chunk it runs, so a
  killed worker strands nothing else and work spreads evenly over processes.
- no result backend: results go to the database, not to Celery.
- the broker connection is retried forever: a Redis restart pauses the work, never ends it.
"""

from __future__ import annotations

from celery import Celery

#: The broker queue the API sends chunks to and workers consume.
QUEUE = "galmet"
#: The task that runs one chunk of a job.
TASK_NAME = "galmet.run_chunk"


def make_celery(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` (e.g. ``redis://127.0.0.1:6379/0``)."""
    app = Celery("galmet", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=4,
        worker_hijack_root_logger=False,  # galmet's own log format, job and chunk ids included
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app
