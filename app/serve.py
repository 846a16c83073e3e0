"""``galmet serve``: the prediction service. Not built yet: the service issue brings it."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def main(args: argparse.Namespace) -> int:
    print(
        "galmet serve: the prediction service is not built yet "
        "(data tools work: galmet simulate, mock-skyserver, catalog, download).",
        file=sys.stderr,
    )
    return 1
