"""``galmet submit FILE --wait``: send a target list to a galmet service from the terminal.

The file (CSV with ``ra``, ``dec`` and optionally ``id`` columns, a JSON list, a VOTable or a
FITS table) is uploaded as a batch job through ``galmet.client.Client``; with ``--wait`` a
progress bar follows the job and the results are saved next to the input (or to ``--out``)
when it is done.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from galmet.client import FORMATS, Client
from galmet.errors import GalmetError

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", type=Path, help="targets: CSV (ra, dec[, id]), JSON, VOTable or FITS"
    )
    parser.add_argument(
        "--server",
        help=f"the galmet service (default: GALMET_URL, else {DEFAULT_SERVER})",
    )
    parser.add_argument("--wait", action="store_true", help="follow the job and save results")
    parser.add_argument(
        "--format", choices=list(FORMATS), default="csv", help="results format (csv)"
    )
    parser.add_argument("--out", type=Path, help="results file (default: FILE.galmet.<ext>)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls (1)")
    parser.add_argument("--timeout", type=float, default=None, help="give up after (seconds)")


def main(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise GalmetError(f"{args.file}: no such file")
    server = args.server or os.environ.get("GALMET_URL") or DEFAULT_SERVER
    with Client(server, timeout=60) as client:
        job = client.submit(args.file)
        print(
            f"job {job['id']}: {job['n_targets']} targets "
            f"({job['counts']['invalid']} invalid rows), {job['links']['self']}"
        )
        if not args.wait:
            return 0
        job = client.wait(job, poll=args.poll, timeout=args.timeout)
        c = job["counts"]
        print(f"done: {c['done']} predicted, {c['failed']} failed, {c['invalid']} invalid")
        out = args.out or args.file.with_name(f"{args.file.stem}.galmet{FORMATS[args.format]}")
        out.write_bytes(client.results(job["id"], args.format))
        print(f"results: {out}")
    return 0
