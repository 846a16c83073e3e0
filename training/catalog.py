"""``galmet catalog``: run the paper's sample-selection query against SkyServer.

The query joins the photometric galaxies (``Galaxy``) with their spectra (``SpecObj``, on
``bestObjID = objID``) and the MPA-JHU tables ``GalSpecInfo`` and ``GalSpecExtra`` (on
``specObjID``) and applies every cut of DESIGN.md "Sample", as ``training.sample`` defines
them. SkyServer returns at most 500,000 rows per query and has a time limit, so the query
is paged by objID (``p.objID > last ORDER BY p.objID``) until a page comes back short or
``--limit`` rows are in. The output CSV has exactly the columns
``training.sample.CATALOG_COLUMNS``, one row per objID.

Two science-primary spectra can share one ``bestObjID`` (a galaxy observed twice): both
rows come back, and both would map to one ``{objID}.jpg``. Rows are ordered by objID and
then by redshift error, and the first row of each objID is kept: the spectrum with the
smallest ``zErr``. The order makes the choice the same whatever the paging; the number of
rows dropped is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack
from tqdm import tqdm

from galmet.errors import GalmetError
from galmet.files import atomic_path
from galmet.skyserver import DEFAULT_RETRIES, DEFAULT_SKYSERVER_URL, SkyServerClient
from galmet.training.sample import CATALOG_COLUMNS, sql_where

#: SkyServer's row limit per query; a page may not be larger, or a truncated page would
#: look like the last one.
MAX_PAGE_SIZE = 500_000

# Which joined table each column (output or cut) comes from: p = Galaxy, s = SpecObj,
# e = GalSpecExtra.
_SPEC_COLUMNS = {"z", "zErr", "rChi2"}
_EXTRA_COLUMNS = {"oh_p16", "oh_p50", "oh_p84", "lgm_tot_p50", "sfr_tot_p50", "bptclass"}
_RELEASE = re.compile(r"[dD][rR][0-9]+")


def _qualified(column: str) -> str:
    if column in _SPEC_COLUMNS:
        return f"s.{column}"
    if column in _EXTRA_COLUMNS:
        return f"e.{column}"
    return f"p.{column}"


def build_query(after_objid: int, top: int, with_mass: bool = False) -> str:
    """The sample-selection query (SkyServer T-SQL) for the ``top`` galaxies with
    objID > ``after_objid``, in objID order. ``with_mass`` adds ``lgm_tot_p50 > 0``."""
    select = ",\n  ".join(_qualified(c) for c in CATALOG_COLUMNS)
    where = f"p.objID > {int(after_objid)}\n  AND " + sql_where(_qualified, with_mass)
    return (
        f"SELECT TOP {int(top)}\n  {select}\n"
        "FROM Galaxy AS p\n"
        "  JOIN SpecObj AS s ON s.bestObjID = p.objID\n"
        "  JOIN GalSpecInfo AS i ON i.specObjID = s.specObjID\n"
        "  JOIN GalSpecExtra AS e ON e.specObjID = s.specObjID\n"
        f"WHERE {where}\n"
        # The best-measured spectrum first among rows sharing an objID (see the module).
        "ORDER BY p.objID, s.zErr"
    )


def skyserver_base_url(url: str | None, release: str | None) -> str:
    """The SkyServer base URL including the data release.

    ``url`` defaults to ``$GALMET_SKYSERVER_URL``, then the real DR17 SkyServer. A URL
    without a release segment gets ``release`` (default dr17) appended; ``release``, when
    given, replaces the URL's own.
    """
    url = (url or os.environ.get("GALMET_SKYSERVER_URL") or DEFAULT_SKYSERVER_URL).rstrip("/")
    if release is not None and not _RELEASE.fullmatch(release):
        raise GalmetError(f"--release must look like dr17, got {release!r}")
    if not url.startswith(("http://", "https://")):
        raise GalmetError(f"SkyServer URL must start with http:// or https://, got {url!r}")
    head, _, last = url.rpartition("/")
    if _RELEASE.fullmatch(last) and "://" in head:
        return f"{head}/{release}" if release else url
    return f"{url}/{release or 'dr17'}"


def _standard_columns(page: Table) -> Table:
    """The page with CATALOG_COLUMNS spelled and ordered as ours (SQL names are
    case-insensitive; SkyServer echoes them as the query wrote them)."""
    by_lower = {name.lower(): name for name in page.colnames}
    missing = [c for c in CATALOG_COLUMNS if c.lower() not in by_lower]
    if missing:
        raise GalmetError(f"SkyServer's answer lacks columns: {', '.join(missing)}")
    out = Table()
    for column in CATALOG_COLUMNS:
        out[column] = page[by_lower[column.lower()]]
    return out


async def fetch_catalog(
    client: SkyServerClient,
    *,
    limit: int | None = None,
    page_size: int = MAX_PAGE_SIZE,
    with_mass: bool = False,
    progress: tqdm | None = None,
) -> Table:
    """Page through the sample-selection query; return up to ``limit`` rows in objID order,
    one per objID (``table.meta["duplicates_dropped"]`` counts the others)."""
    pages: list[Table] = []
    total, last, queries, dropped = 0, 0, 0, 0  # SDSS objIDs are positive
    while limit is None or total < limit:
        top = page_size if limit is None else min(page_size, limit - total)
        page = await client.sql(build_query(last, top, with_mass))
        queries += 1
        fetched = len(page)
        if fetched:
            page = _standard_columns(page)
            last = int(page["objID"][-1])
            objids = np.asarray(page["objID"], dtype=np.int64)
            # Rows come in objID order, so a duplicate follows its first row; the page
            # before may end with the same objID.
            first = np.ones(fetched, dtype=bool)
            first[1:] = objids[1:] != objids[:-1]
            if pages and objids[0] == int(pages[-1]["objID"][-1]):
                first[0] = False
            dropped += int((~first).sum())
            page = page[first]
            pages.append(page)
            total += len(page)
        if progress is not None:
            progress.update(len(page))
            progress.set_postfix(queries=queries, duplicates=dropped)
        if fetched < top:
            break
    table = (
        vstack(pages, join_type="exact", metadata_conflicts="silent") if pages else _empty_catalog()
    )
    table.meta["duplicates_dropped"] = dropped
    return table


def _empty_catalog() -> Table:
    ints = {"objID", "bptclass"}
    return Table(
        [np.zeros(0, dtype=np.int64 if c in ints else float) for c in CATALOG_COLUMNS],
        names=CATALOG_COLUMNS,
    )


def write_catalog(table: Table, out: Path) -> None:
    """Write the catalog CSV atomically: a partial file never takes the final name."""
    try:
        with atomic_path(out) as part:
            table.write(part, format="ascii.csv", overwrite=True)
    except OSError as exc:
        raise GalmetError(f"cannot write {out}: {exc.strerror or exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="catalog CSV to write")
    parser.add_argument(
        "--skyserver",
        default=None,
        help=f"SkyServer base URL (default: $GALMET_SKYSERVER_URL, else {DEFAULT_SKYSERVER_URL})",
    )
    parser.add_argument(
        "--release", default=None, help="data release, e.g. dr17 (default: the URL's, else dr17)"
    )
    parser.add_argument("--limit", type=int, default=None, help="stop after N galaxies")
    parser.add_argument(
        "--page-size",
        type=int,
        default=MAX_PAGE_SIZE,
        help=f"rows per query (default and maximum {MAX_PAGE_SIZE:,})",
    )
    parser.add_argument(
        "--with-mass",
        action="store_true",
        help="also require a stellar mass (lgm_tot_p50 > 0), for mass as a target",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"retries of a failed query (default {DEFAULT_RETRIES})",
    )


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.page_size <= MAX_PAGE_SIZE:
        raise GalmetError(f"--page-size must be in 1..{MAX_PAGE_SIZE}, got {args.page_size}")
    if args.limit is not None and args.limit < 1:
        raise GalmetError(f"--limit must be at least 1, got {args.limit}")
    if args.retries < 0:
        raise GalmetError(f"--retries must be 0 or more, got {args.retries}")
    base_url = skyserver_base_url(args.skyserver, args.release)

    async def run() -> Table:
        async with SkyServerClient(base_url, retries=args.retries) as client:
            with tqdm(total=args.limit, unit="rows", desc="catalog", file=sys.stderr) as bar:
                return await fetch_catalog(
                    client,
                    limit=args.limit,
                    page_size=args.page_size,
                    with_mass=args.with_mass,
                    progress=bar,
                )

    table = asyncio.run(run())
    dropped = table.meta.pop("duplicates_dropped", 0)
    write_catalog(table, args.out)
    print(
        f"wrote {len(table)} galaxies to {args.out}"
        + (
            f" ({dropped} duplicate spectra of the same objID dropped: kept the smallest zErr)"
            if dropped
            else ""
        ),
        file=sys.stderr,
    )
    return 0
