"""Prometheus metrics of the API and of each worker process.

Every process keeps its own counters: the API serves them at ``/metrics``; a ``galmet
worker`` process serves its own on ``GALMET_WORKER_METRICS_PORT + k`` (k = 1, 2, … for its
pool processes) when that is set. Throughput over time is ``rate(galmet_images_total[1m])``;
``galmet_images_per_second`` is the speed of the model during the last batch alone.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("galmet.metrics")

REQUEST_SECONDS = Histogram(
    "galmet_http_request_duration_seconds",
    "HTTP request latency, by route template and status",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "galmet_inference_batch_size",
    "images per forward pass of the inference engine",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
IMAGES = Counter("galmet_images", "images run through the model (TTA copies not counted)")
INFERENCE_SECONDS = Counter("galmet_inference_seconds", "time spent in forward passes")
IMAGES_PER_SECOND = Gauge("galmet_images_per_second", "model speed during the last batch")
QUEUE_DEPTH = Gauge(
    "galmet_queue_depth",
    "job chunks waiting: messages in the broker queue, or in-process chunks not yet done",
)
JOB_TARGETS = Counter("galmet_job_targets", "batch-job targets answered, by outcome", ["outcome"])


def observe_batch(images: int, seconds: float) -> None:
    """Record one forward pass of ``images`` images that took ``seconds``."""
    BATCH_SIZE.observe(images)
    IMAGES.inc(images)
    INFERENCE_SECONDS.inc(seconds)
    if seconds > 0:
        IMAGES_PER_SECOND.set(images / seconds)


def serve_worker_metrics(port: int | None) -> None:
    """In a worker pool process: serve this process's metrics on ``port + k``."""
    if port is None:
        return
    from billiard.process import current_process
    from prometheus_client import start_http_server

    index = getattr(current_process(), "index", 0) or 0
    try:
        start_http_server(port + 1 + index)
        log.info("metrics on port %d", port + 1 + index)
    except OSError as exc:  # a busy port must not stop the worker from working
        log.warning("metrics not served on port %d: %s", port + 1 + index, exc)
