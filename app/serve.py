"""``galmet serve``: the API and web page on embedded defaults (see app.core.config).

``--workers N`` runs N server processes (uvicorn's supervisor) on one port, each with its own
model and inference engine, all on the shared database: SQLite in WAL mode with a busy
timeout (``galmet.app.db``), or PostgreSQL. What must happen once happens in this process
before they start: the migrations, and the demo model's build when no model is configured
(the build is also serialised by a file lock, so concurrent starts never race on it).
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from galmet.errors import GalmetError

#: How the supervisor tells each server process the log level it was given.
_LOG_LEVEL_ENV = "GALMET_SERVE_LOG_LEVEL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (info)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own model and engine, sharing the database (1)",
    )


def main(args: argparse.Namespace) -> int:
    from galmet.app.core.config import checked_settings
    from galmet.app.core.logs import setup_logging

    if args.workers < 1:
        raise GalmetError(f"--workers must be 1 or more, not {args.workers}")
    settings = checked_settings()
    from galmet.app.main import create_app  # torch, the model code: only once the settings are sane

    setup_logging(args.log_level, settings.log_json)
    print(f"galmet: serving on http://{args.host}:{args.port}/ (API docs at /docs)")
    options = {"host": args.host, "port": args.port, "log_level": args.log_level}
    if args.workers == 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    prepare(settings)
    os.environ[_LOG_LEVEL_ENV] = args.log_level  # the processes inherit the environment
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=args.workers, **options)
    return 0


def prepare(settings) -> None:
    """What the server processes would otherwise all do at once: migrate the database and
    build the demo model (when no model is configured)."""
    from galmet.app import db
    from galmet.app.demo import demo_checkpoint

    db.upgrade(settings.database_url)
    if settings.model is None:
        demo_checkpoint(settings)


def worker_app():
    """The app of one server process under ``--workers``: settings from the same
    environment as the supervisor's, logging as it was asked for."""
    from galmet.app.core.config import checked_settings
    from galmet.app.core.logs import setup_logging
    from galmet.app.main import create_app

    settings = checked_settings()
    setup_logging(os.environ.get(_LOG_LEVEL_ENV, "info"), settings.log_json)
    return create_app(settings)
