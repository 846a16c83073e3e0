"""``galmet worker``: a Celery worker that runs batch-job chunks (on the GPU when present).

Start one per GPU (or a few on a CPU host) on any machine that reaches the broker, the
database and SkyServer, with the same ``GALMET_*`` settings and checkpoint as the API.
"""

from __future__ import annotations

import argparse
import os
import socket

from galmet.errors import GalmetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes, each with its own copy of the model (1; one per GPU)",
    )
    parser.add_argument("--broker", help="broker URL (default: GALMET_BROKER_URL)")
    parser.add_argument("--log-level", default="info", help="log level (info)")
    parser.add_argument("--name", default=None, help="worker name (default: galmet-<pid>@<host>)")


def main(args: argparse.Namespace) -> int:
    from galmet.app.core.config import checked_settings
    from galmet.app.core.logs import setup_logging

    if args.concurrency < 1:
        raise GalmetError("--concurrency must be at least 1")
    settings = checked_settings()
    if args.broker:
        settings = settings.model_copy(update={"broker_url": args.broker})
    if not settings.broker_url:
        raise GalmetError(
            "no broker: set GALMET_BROKER_URL (e.g. redis://127.0.0.1:6379/0) or --broker; "
            "without one, galmet serve runs jobs in-process"
        )
    setup_logging(args.log_level, settings.log_json)
    preflight(settings)
    from galmet.app.broker import QUEUE
    from galmet.worker.tasks import make_worker_app

    app = make_worker_app(settings)
    name = args.name or f"galmet-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            f"--concurrency={args.concurrency}",
            "--pool=prefork",
            f"--loglevel={args.log_level.upper()}",
            f"--queues={QUEUE}",
            f"--hostname={name}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


def preflight(settings) -> None:
    """Fail at once, in one line, where every chunk would fail later: no GPU where one was
    asked for, a checkpoint that does not load. The demo model (no GALMET_MODEL) is built here,
    once, before the pool processes start.

    This process forks the pool afterwards, so it must never initialise CUDA (a forked child
    of a process that asked ``torch.cuda`` anything cannot use the GPU): the device check and
    the demo build run in spawned processes (``galmet.device``).
    """
    from galmet.device import check_device_elsewhere
    from galmet.model import Checkpoint

    check_device_elsewhere(settings.device)
    path = settings.model or _demo_elsewhere(settings)
    try:
        Checkpoint.load(path)  # onto the CPU: no CUDA here
    except Exception as exc:  # whatever is wrong with the file, the worker cannot run
        raise GalmetError(f"cannot load the model {path}: {exc}".splitlines()[0]) from None


def _demo_elsewhere(settings):
    """``demo_checkpoint(settings)`` in a spawned process (it may train on the GPU)."""
    import multiprocessing

    from galmet.app.demo import demo_checkpoint, demo_path

    if demo_path(settings) is not None:
        return demo_path(settings)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(demo_checkpoint, (settings,))
