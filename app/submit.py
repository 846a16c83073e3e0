"""``galmet submit FILE --wait``: send a target list to a galmet service from the terminal.

The file (CSV with ``ra``, ``dec`` and optionally ``id`` columns, a JSON list, or a VOTable)
is uploaded as a batch job; with ``--wait`` a progress bar follows the job and the results
are saved next to the input (or to ``--out``) when it is done.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from galmet.errors import GalmetError

EXTENSIONS = {"csv": ".csv", "json": ".json", "votable": ".vot"}
DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="targets: CSV (ra, dec[, id]), JSON or VOTable")
    parser.add_argument(
        "--server",
        help=f"the galmet service (default: GALMET_URL, else {DEFAULT_SERVER})",
    )
    parser.add_argument("--wait", action="store_true", help="follow the job and save results")
    parser.add_argument(
        "--format", choices=list(EXTENSIONS), default="csv", help="results format (csv)"
    )
    parser.add_argument("--out", type=Path, help="results file (default: FILE.galmet.<ext>)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls (1)")
    parser.add_argument("--timeout", type=float, default=None, help="give up after (seconds)")


def main(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise GalmetError(f"{args.file}: no such file")
    server = args.server or os.environ.get("GALMET_URL") or DEFAULT_SERVER
    api = server.rstrip("/") + "/api/v1"
    with httpx.Client(timeout=60) as client:
        with args.file.open("rb") as fh:
            job = _call(client, "post", f"{api}/jobs", files={"file": (args.file.name, fh)})
        print(
            f"job {job['id']}: {job['n_targets']} targets "
            f"({job['counts']['invalid']} invalid rows), {job['links']['self']}"
        )
        if not args.wait:
            return 0
        job = follow(client, job, args.poll, args.timeout)
        c = job["counts"]
        print(f"done: {c['done']} predicted, {c['failed']} failed, {c['invalid']} invalid")
        out = args.out or args.file.with_name(f"{args.file.stem}.galmet{EXTENSIONS[args.format]}")
        response = _get(client, f"{job['links']['results']}?format={args.format}")
        out.write_bytes(response.content)
        print(f"results: {out}")
    return 0


def follow(client: httpx.Client, job: dict, poll: float, timeout: float | None) -> dict:
    """Poll the job until it is done, with a progress bar over its rows."""
    started = time.monotonic()
    with tqdm(total=job["n_targets"], unit="target", desc="galmet job") as bar:
        while True:
            c = job["counts"]
            bar.n = job["n_targets"] - c["queued"]
            bar.set_postfix(failed=c["failed"], invalid=c["invalid"], refresh=False)
            bar.refresh()
            if job["status"] == "done":
                return job
            if timeout is not None and time.monotonic() - started > timeout:
                raise GalmetError(
                    f"job {job['id']} not done after {timeout:g} s; it keeps running on the "
                    f"server: {job['links']['self']}"
                )
            time.sleep(poll)
            job = _call(client, "get", job["links"]["self"])


def _get(client: httpx.Client, url: str) -> httpx.Response:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise GalmetError(f"{url}: {exc}") from None
    _check(response)
    return response


def _call(client: httpx.Client, method: str, url: str, **kwargs) -> dict:
    try:
        response = client.request(method.upper(), url, **kwargs)
    except httpx.HTTPError as exc:
        raise GalmetError(f"cannot reach the galmet service at {url}: {exc}") from None
    _check(response)
    return response.json()


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text[:200]
    raise GalmetError(f"the service answered {response.status_code}: {detail}")
