"""``galmet download``: fetch the SDSS cutout of every catalog galaxy, politely and resumably.

Writes ``DIR/images/{objID}.jpg`` (each written to a temporary file beside it, then renamed,
so an interrupted run never leaves a half-written image), ``DIR/blank.csv`` (objID, ra, dec
of the off-footprint, near-black cutouts, which are not saved as images) and
``DIR/failed.csv`` (objID, ra, dec, reason of this run's cutouts still failing after the
retries). Both CSV files are always written, header only when empty.

Resume: run the same command again. Images already on disk that decode are skipped without
a request, corrupt or truncated ones are fetched again, galaxies listed in ``blank.csv`` are
not asked for again, and the failed ones are retried.

``--scale-mode petro`` fetches each cutout at the paper's scale from the catalog's
``petroR90_r`` (``galmet.scale_mode.petro_scale``: ``2 * petroR90_r / 0.396 / size``
arcsec/px); rows without a positive ``petroR90_r`` are not fetched and are listed in
``failed.csv``. Train on such a folder with ``galmet train --scale-mode petro``.

Defaults: 8 requests in flight, 10 requests per second (the ~142k-galaxy sample in about 4
hours), 4 retries with exponential backoff and jitter. After 50 failures in a row the run
stops (SkyServer is down, or ``--skyserver`` is wrong); the next run picks up the rest.
The exit status is 0 when every galaxy was fetched, already there, or blank, and 1 when any
failed (they are in ``failed.csv``; running again retries them).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table
from tqdm import tqdm

from galmet.errors import GalmetError
from galmet.files import atomic_write, remove_stale
from galmet.images import is_valid_jpeg
from galmet.scale_mode import SCALE_MODES, check_scale_mode, petro_scale
from galmet.sky import is_position
from galmet.skyserver import (
    DEFAULT_CONCURRENCY,
    DEFAULT_RATE,
    DEFAULT_RETRIES,
    DEFAULT_SCALE,
    DEFAULT_SIZE,
    DEFAULT_SKYSERVER_URL,
    DEFAULT_TIMEOUT,
    MAX_SIZE,
    MIN_SIZE,
    SkyServerClient,
    SkyServerError,
    parse_sql_csv,
)

REQUIRED_COLUMNS = ("objID", "ra", "dec")
#: Stop after this many failures in a row with no success: SkyServer is down or the URL is
#: wrong, and retrying every remaining galaxy would only take hours.
ABORT_AFTER_FAILURES = 50


@dataclass
class DownloadSummary:
    """What a download run did. ``aborted`` holds the reason when it stopped early."""

    fetched: int = 0
    skipped: int = 0
    blank: int = 0
    failed: int = 0
    not_attempted: int = 0
    seconds: float = 0.0
    requests: int = 0
    aborted: str = ""
    failures: list[tuple[int, float, float, str]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.not_attempted == 0

    def line(self) -> str:
        """One-line summary for the terminal."""
        rate = self.fetched / self.seconds if self.seconds else 0.0
        text = (
            f"fetched {self.fetched}, skipped {self.skipped}, blank {self.blank}, "
            f"failed {self.failed} in {self.seconds:.1f} s ({rate:.1f} cutouts/s)"
        )
        if self.aborted:
            text += f"; stopped early, {self.not_attempted} not attempted: {self.aborted}"
        return text


def read_catalog(path: Path) -> Table:
    """Read a catalog CSV (plain, or SkyServer's ``#Table1`` form) with objID, ra, dec."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise GalmetError(f"catalog file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GalmetError(f"cannot read catalog {path}: {exc}") from None
    try:
        if text.lstrip("\ufeff").startswith("#Table"):
            table = parse_sql_csv(text)
        else:
            table = Table.read(text, format="ascii.csv")
    except Exception as exc:  # astropy raises several types for malformed CSV
        raise GalmetError(f"cannot parse catalog {path} as CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise GalmetError(f"catalog {path} lacks column(s) {', '.join(missing)}")
    if table["objID"].dtype.kind not in "iu":
        raise GalmetError(f"catalog {path}: objID must be integers")
    for name in ("ra", "dec"):
        if table[name].dtype.kind not in "iuf":
            raise GalmetError(f"catalog {path}: {name} must be numbers (decimal degrees)")
    return table


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


def _known_blanks(path: Path) -> dict[int, tuple]:
    """objID -> row of an existing ``blank.csv``."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {int(r["objID"]): (int(r["objID"]), r["ra"], r["dec"]) for r in csv.DictReader(f)}


async def download_cutouts(
    catalog: Table,
    out_dir: Path,
    client: SkyServerClient,
    *,
    scale: float = DEFAULT_SCALE,
    size: int = DEFAULT_SIZE,
    limit: int | None = None,
    progress: bool = True,
    abort_after: int = ABORT_AFTER_FAILURES,
    scale_mode: str = "fixed",
) -> DownloadSummary:
    """Fetch the cutouts of ``catalog`` (objID, ra, dec) into ``out_dir``; see the module doc.

    Runs ``client.concurrency`` workers; the client enforces the concurrency and rate
    limits and retries. Writes ``images/``, ``blank.csv`` and ``failed.csv``. With
    ``scale_mode`` "petro" each cutout's scale comes from the row's ``petroR90_r``.
    """
    check_scale_mode(scale_mode)
    if scale_mode == "petro" and "petroR90_r" not in catalog.colnames:
        raise GalmetError("--scale-mode petro needs a petroR90_r column in the catalog")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    # Temporary files left by a run that was killed mid-write.
    remove_stale(images)

    # Empty (masked) coordinates become NaN, reported as invalid below.
    ras, decs = (
        np.ma.filled(np.ma.asarray(catalog[c], dtype=float), np.nan) for c in ("ra", "dec")
    )
    # Each row's scale: the fixed one, or the row's petro scale (NaN where it has none).
    scales = np.full(len(catalog), float(scale))
    if scale_mode == "petro":
        r90 = np.ma.filled(np.ma.asarray(catalog["petroR90_r"], dtype=float), np.nan)
        scales = np.array([petro_scale(r, size) if r > 0 else np.nan for r in r90])
    rows: dict[int, tuple[float, float, float]] = {}
    for obj_id, ra, dec, s in zip(catalog["objID"], ras, decs, scales, strict=True):
        if limit is not None and len(rows) >= limit:
            break
        rows.setdefault(int(obj_id), (float(ra), float(dec), float(s)))

    summary = DownloadSummary()
    # Blanks found before are kept (and not asked for again), even those outside --limit.
    blanks = _known_blanks(out_dir / "blank.csv")
    known_blank = set(blanks)
    consecutive_failures = 0
    requests_before = client.requests_sent
    started = time.monotonic()
    bar = tqdm(total=len(rows), unit="img", desc="download", disable=not progress)

    async def fetch(obj_id: int, ra: float, dec: float, scale: float) -> None:
        nonlocal consecutive_failures
        path = images / f"{obj_id}.jpg"
        if obj_id in known_blank:
            summary.blank += 1
            return
        if path.exists() and is_valid_jpeg(path.read_bytes(), (size, size)):
            summary.skipped += 1
            return
        if not is_position(ra, dec):
            summary.failures.append((obj_id, ra, dec, "invalid coordinates"))
            summary.failed += 1
            return
        if not np.isfinite(scale):
            summary.failures.append(
                (obj_id, ra, dec, "no positive petroR90_r (--scale-mode petro)")
            )
            summary.failed += 1
            return
        try:
            cutout = await client.cutout(ra, dec, scale=scale, width=size, height=size)
        except SkyServerError as exc:
            summary.failures.append((obj_id, ra, dec, exc.reason))
            summary.failed += 1
            consecutive_failures += 1
            if consecutive_failures >= abort_after and not summary.aborted:
                summary.aborted = f"{consecutive_failures} failures in a row, last: {exc}"
            return
        consecutive_failures = 0
        if cutout.blank:
            blanks[obj_id] = (obj_id, ra, dec)
            summary.blank += 1
            # A stale corrupt file must not pass for this galaxy's image.
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, cutout.jpeg)
            summary.fetched += 1

    todo = iter(rows.items())

    async def worker() -> None:
        # Workers share one iterator: no await between next() calls, so no row is taken twice.
        for obj_id, (ra, dec, scale) in todo:
            if summary.aborted:
                summary.not_attempted += 1
            else:
                await fetch(obj_id, ra, dec, scale)
            bar.update(1)
            bar.set_postfix(
                ok=summary.fetched + summary.skipped,
                blank=summary.blank,
                failed=summary.failed,
                refresh=False,
            )

    try:
        await asyncio.gather(*(worker() for _ in range(client.concurrency)))
    finally:
        bar.close()
        _write_csv(out_dir / "blank.csv", ["objID", "ra", "dec"], sorted(blanks.values()))
        _write_csv(
            out_dir / "failed.csv", ["objID", "ra", "dec", "reason"], sorted(summary.failures)
        )
        summary.seconds = time.monotonic() - started
        summary.requests = client.requests_sent - requests_before
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_url = os.environ.get("GALMET_SKYSERVER_URL", DEFAULT_SKYSERVER_URL)
    parser.add_argument("--catalog", type=Path, required=True, help="catalog CSV (objID, ra, dec)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"requests per second, 0 for no limit (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--skyserver",
        default=default_url,
        help="SkyServer base URL with the release (default $GALMET_SKYSERVER_URL or "
        f"{DEFAULT_SKYSERVER_URL})",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"arcsec per pixel (default {DEFAULT_SCALE})",
    )
    parser.add_argument(
        "--scale-mode",
        choices=SCALE_MODES,
        default="fixed",
        help="fixed: every cutout at --scale; petro: each at 2*petroR90_r/0.396/size "
        "arcsec/px from the catalog (the paper's recipe; default fixed)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=f"cutout width and height in pixels, {MIN_SIZE}..{MAX_SIZE} (default {DEFAULT_SIZE})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"retries per cutout after the first attempt (default {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per attempt (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--limit", type=int, help="only the first N galaxies of the catalog")


def main(args: argparse.Namespace) -> int:
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        raise GalmetError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels")
    if args.concurrency < 1:
        raise GalmetError("--concurrency must be at least 1")
    if args.rate < 0 or args.retries < 0 or not args.scale > 0 or not args.timeout > 0:
        raise GalmetError("--rate and --retries must be 0 or more; --scale and --timeout positive")
    if args.limit is not None and args.limit < 0:
        raise GalmetError("--limit must be 0 or more")
    if not args.skyserver.startswith(("http://", "https://")):
        raise GalmetError(f"--skyserver must be an http(s) URL, not {args.skyserver!r}")
    catalog = read_catalog(args.catalog)

    async def run() -> DownloadSummary:
        async with SkyServerClient(
            args.skyserver,
            concurrency=args.concurrency,
            rate=args.rate or None,
            retries=args.retries,
            timeout=args.timeout,
        ) as client:
            return await download_cutouts(
                catalog,
                args.out,
                client,
                scale=args.scale,
                size=args.size,
                limit=args.limit,
                scale_mode=args.scale_mode,
            )

    summary = asyncio.run(run())
    print(summary.line())
    if summary.failed:
        print(
            f"failures listed in {args.out / 'failed.csv'}; run again to retry them",
            file=sys.stderr,
        )
    return 0 if summary.ok else 1
