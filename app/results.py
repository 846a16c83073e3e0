"""A batch job's results as JSON, CSV or VOTable: one row per input row, in the order given.

Each row is a dict with exactly the keys of ``RESULT_COLUMNS`` (built from the database by
``app.jobs``). None is an empty CSV field, JSON ``null``, and a masked (null) VOTable cell.
Numbers are written exactly (``repr``, the shortest text that reads back as the same float),
so CSV and JSON agree with each other and with the database, and RA/Dec keep all their
digits (``%.6g`` would round 150.123456 to 150.123, 0.4 arcsec off).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

#: The columns of every format, in order.
RESULT_COLUMNS = (
    "row",
    "id",
    "ra",
    "dec",
    "status",
    "objID",
    "type",
    "separation_arcsec",
    "oh_p50",
    "oh_sigma",
    "oh_p16",
    "oh_p84",
    "log_mstar",
    "log_mstar_sigma",
    "oh_tta_spread",
    "ood_score",
    "cached",
    "flags",
    "reason",
)
_FLOATS = frozenset(
    ("ra", "dec", "separation_arcsec", "oh_p50", "oh_sigma", "oh_p16", "oh_p84", "log_mstar")
    + ("log_mstar_sigma", "oh_tta_spread", "ood_score")
)
_INTEGERS = ("objID", "type")
_TEXTS = ("id", "status", "flags", "reason")
FLAG_SEPARATOR = ";"

#: VOTable column metadata: (unit, UCD, description). "dex" is not VOUnit, but it is what
#: astropy and TOPCAT read as a logarithmic unit; log_mstar is log10(M*/Msun) in dex.
_VOTABLE_FIELDS: dict[str, tuple[str | None, str | None, str]] = {
    "row": (None, "meta.record", "1-based number of the data row in the submitted target list"),
    "id": (None, "meta.id;meta.main", "the target's id as submitted (empty when none)"),
    "ra": ("deg", "pos.eq.ra;meta.main", "right ascension (ICRS), decimal degrees"),
    "dec": ("deg", "pos.eq.dec;meta.main", "declination (ICRS), decimal degrees"),
    "status": (
        None,
        "meta.code.status",
        "done: predicted; failed: could not be predicted (see reason); invalid: bad input "
        "row, never run; queued: not yet run",
    ),
    "objID": (None, "meta.id.cross", "SDSS photometric objID of the object at the position"),
    "type": (None, "src.class", "SDSS PhotoObj.type of that object: 3 galaxy, 6 star, ..."),
    "separation_arcsec": (
        "arcsec",
        "pos.angDistance",
        "from the position given to the SDSS object (the cutout is centred on the object)",
    ),
    "oh_p50": ("dex", "phys.abund.Z", "gas-phase metallicity 12 + log10(O/H), median"),
    "oh_sigma": ("dex", "stat.error;phys.abund.Z", "1-sigma uncertainty of oh_p50 (calibrated)"),
    "oh_p16": ("dex", "phys.abund.Z", "oh_p50 - oh_sigma (16th percentile)"),
    "oh_p84": ("dex", "phys.abund.Z", "oh_p50 + oh_sigma (84th percentile)"),
    "log_mstar": ("dex", "phys.mass", "log10 of the stellar mass in solar masses"),
    "log_mstar_sigma": ("dex", "stat.error;phys.mass", "1-sigma uncertainty of log_mstar"),
    "oh_tta_spread": (
        "dex",
        "stat.stdev;phys.abund.Z",
        "standard deviation of oh_p50 over the test-time augmentation copies",
    ),
    "ood_score": (
        None,
        "stat.fit.goodness",
        "out-of-distribution score: Mahalanobis distance of the image's features from the "
        "training set's over sqrt(their number), about 1 for a typical training galaxy; "
        "flagged out_of_distribution above the model's threshold",
    ),
    "cached": (None, "meta.code", "true when the prediction came from the cache"),
    "flags": (
        None,
        "meta.code.qual",
        f"quality flags separated by {FLAG_SEPARATOR!r}, e.g. grayscale_converted",
    ),
    "reason": (None, "meta.note", "why the row has no prediction (failed or invalid rows)"),
}


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """The row's values in column order; a NaN or inf becomes None, since strict JSON has
    no NaN and a reader should see a missing value, not a number."""
    out = {c: row[c] for c in RESULT_COLUMNS}  # KeyError names a key the contract lacks
    for c in _FLOATS:
        v = out[c]
        if v is not None:
            v = float(v)  # numpy floats from the engine print like Python floats
            out[c] = v if math.isfinite(v) else None
    out["flags"] = list(out["flags"] or [])
    return out


# ---------------------------------------------------------------------------- CSV
def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return FLAG_SEPARATOR.join(value)
    return str(value)


def results_csv(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV text, one string per line: the header, then one line per row (RFC 4180: CRLF line
    ends, fields quoted when needed). None is an empty field, booleans true/false, flags
    joined with ';'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: Iterable[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(RESULT_COLUMNS)
    for row in rows:
        clean = _clean(row)
        yield line(_csv_cell(clean[c]) for c in RESULT_COLUMNS)


# ---------------------------------------------------------------------------- JSON
def results_json(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A JSON array of row objects, streamed one row per chunk: a large job is never held
    as one string, and the joined chunks are valid JSON."""
    first = True
    for row in rows:
        yield ("[\n" if first else ",\n") + json.dumps(_clean(row), allow_nan=False)
        first = False
    yield "[]\n" if first else "\n]\n"


# ---------------------------------------------------------------------------- VOTable
def _column(values: list[Any], name: str) -> tuple[Any, str | None]:
    """An astropy column of the right type from a list with None for missing (masked), and
    its UCD."""
    from astropy.table import MaskedColumn

    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    if name in _TEXTS:
        # VOTable has no null for characters (astropy writes a masked one as "" and reads
        # it back unmasked), so None is simply "" and nothing is masked: astropy's
        # from_table also fails on a masked object cell. Object dtype is written as
        # variable-length unicodeChar, not padded to the longest value; with no rows at
        # all astropy cannot type an object column, so str it is.
        data: Any = np.array(
            ["" if v is None else str(v) for v in values], dtype=object if values else str
        )
        mask[:] = False
    elif name == "row":
        data = np.array(values, dtype=np.int64)
    elif name in _INTEGERS:
        data = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
    elif name == "cached":
        data = np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))
    else:
        data = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    unit, ucd, description = _VOTABLE_FIELDS[name]
    column = MaskedColumn(data, name=name, mask=mask, unit=unit, description=description)
    return column, ucd


def results_votable(rows: Iterable[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    """The results as a VOTable (TABLEDATA, readable by TOPCAT and astropy). None values
    are null cells; character cells have no null in VOTable, so a missing id or reason
    reads back as an empty string. ``meta`` (job id, model version, tta...) is written as
    INFO elements of the resource."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info
    from astropy.table import Table

    columns: dict[str, list[Any]] = {c: [] for c in RESULT_COLUMNS}
    for row in rows:
        clean = _clean(row)
        clean["flags"] = FLAG_SEPARATOR.join(clean["flags"])
        for c in RESULT_COLUMNS:
            columns[c].append(clean[c])
    built = [_column(columns[c], c) for c in RESULT_COLUMNS]
    table = Table([col for col, _ in built])
    table.meta["description"] = "galmet batch job results: one row per submitted target"
    votable = from_table(table)
    vtable = votable.get_first_table()
    for field, (_, ucd) in zip(vtable.fields, built, strict=True):
        field.ucd = ucd
        if field.name == "cached":
            field.datatype = "boolean"  # astropy writes numpy bools as "bit"
    resource = votable.resources[0]
    for key, value in meta.items():
        # INFO IDs share the document's ID space with the FIELDs ("id" would clash), so
        # they get a prefix; the name is the key as given.
        text = "" if value is None else str(value)
        ident = "job_" + re.sub(r"[^A-Za-z0-9_]", "_", str(key))  # a valid XML ID
        resource.infos.append(Info(ID=ident, name=str(key), value=text))
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # W50 for "dex", which VOUnit does not list
        # The pure-Python TABLEDATA writer: astropy's C writer overflows its row buffer by
        # one byte for some rows (astropy issue #20419, open in 8.0), corrupting the heap
        # and crashing the service later at a random point. A one-row reproduction is in
        # tests/test_results.py.
        votable.to_xml(out, _debug_python_based_parser=True)
    return out.getvalue()
