"""``galmet serve``: the API and web page on embedded defaults (see app.core.config)."""

from __future__ import annotations

import argparse

import uvicorn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (info)")


def main(args: argparse.Namespace) -> int:
    from galmet.app.core.config import checked_settings
    from galmet.app.core.logs import setup_logging

    settings = checked_settings()
    from galmet.app.main import create_app  # torch, the model code: only once the settings are sane

    setup_logging(args.log_level, settings.log_json)
    print(f"galmet: serving on http://{args.host}:{args.port}/ (API docs at /docs)")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
