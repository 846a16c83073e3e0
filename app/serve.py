"""``galmet serve``: the API and web page on embedded defaults (see app.core.config)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from galmet.errors import GalmetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (info)")


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.core.config import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise GalmetError(f"bad GALMET_{str(first['loc'][0]).upper()}: {first['msg']}") from None
    from sqlalchemy.exc import ArgumentError

    from app.db import normalize_url

    try:
        normalize_url(settings.database_url)
    except ArgumentError as exc:
        raise GalmetError(f"bad GALMET_DATABASE_URL: {exc}") from None
    if settings.model is not None and not settings.model.exists():
        raise GalmetError(f"GALMET_MODEL={settings.model} does not exist")
    from app.main import create_app  # torch, the model code: only once the settings are sane

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    print(f"galmet: serving on http://{args.host}:{args.port}/ (API docs at /docs)")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
