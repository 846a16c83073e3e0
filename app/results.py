"""A batch job's results as JSON or CSV (VOTable and FITS: ``galmet.app.results_tables``): the
user's table given back, row for row.

Every input row comes back in the order given, with every input column first (as given) and
galmet's columns (``RESULT_COLUMNS``) after them; a galmet column whose name the input
already uses is prefixed ``galmet_`` (the input's ``ra`` stays the user's text, ``galmet_ra``
is the position in degrees that was predicted). Each row dict (built from the database by
``galmet.app.jobs``) has exactly the keys of ``RESULT_COLUMNS``, and the input row's cells
under ``"input"``. None is an empty CSV field, JSON ``null``, and a null VOTable or FITS cell.

Values in dex (metallicity, mass and their errors) are rounded to ``DEX_DECIMALS`` (4)
decimals and separations to a milliarcsecond, the same in every format; RA/Dec keep all their
digits (``%.6g`` would round 150.123456 to 150.123, 0.4 arcsec off). Every format names the
model version and TTA the predictions came from, and the model's notice (the mock-sky demo's
"not for science"): CSV as ``# key: value`` header lines, JSON as fields of every row,
VOTable as INFO and PARAM elements, FITS as header keywords.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from galmet.record import DEX_DECIMALS

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
INTEGER_COLUMNS = ("objID", "type")
TEXT_COLUMNS = ("id", "status", "flags", "reason")
FLAG_SEPARATOR = ";"
#: Fields in dex, rounded to DEX_DECIMALS (again: a row may come from an older cache).
DEX_FIELDS = ("oh_p50", "oh_sigma", "oh_p16", "oh_p84", "log_mstar", "log_mstar_sigma")
DEX_FIELDS += ("oh_tta_spread",)
ARCSEC_DECIMALS = 3
#: What the predictions came from: CSV header lines, JSON fields of every row, VOTable PARAMs.
MODEL_FIELDS = ("model_version", "tta", "notice")
#: The prefix of a galmet column whose name the input already has.
PREFIX = "galmet_"


def output_names(input_columns: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The names of galmet's columns (then ``extra`` ones) after ``input_columns``: each as
    it is, or prefixed ``galmet_`` (again, if need be) where the input has that name."""
    taken = set(input_columns)
    names = []
    for column in (*RESULT_COLUMNS, *extra):
        name = column
        while name in taken:
            name = PREFIX + name
        taken.add(name)
        names.append(name)
    return names


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row's galmet values in column order, rounded; a NaN or inf becomes None, since
    strict JSON has no NaN and a reader should see a missing value, not a number."""
    out = {c: row[c] for c in RESULT_COLUMNS}  # KeyError names a key the contract lacks
    for c in _FLOATS:
        v = out[c]
        if v is not None:
            v = float(v)  # numpy floats from the engine print like Python floats
            if not math.isfinite(v):
                out[c] = None
            elif c in DEX_FIELDS:
                out[c] = round(v, DEX_DECIMALS)
            elif c == "separation_arcsec":
                out[c] = round(v, ARCSEC_DECIMALS)
            else:
                out[c] = v
    out["flags"] = list(out["flags"] or [])
    return out


def results_meta(status: dict[str, Any]) -> dict[str, Any]:
    """What a results file says about its job, from the job's status document."""
    keys = ("id", "status", "model_version", "tta", "notice", "n_targets")
    return {k: status.get(k) for k in keys}


def model_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """model_version, tta and notice from a job's status (None where absent)."""
    meta = meta or {}
    return {k: meta.get(k) for k in MODEL_FIELDS}


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


def input_text(value: Any) -> str:
    """An input cell as CSV text: as given; a JSON input's list or object as JSON."""
    if isinstance(value, list | dict):
        return json.dumps(value, allow_nan=False)
    return _csv_cell(value)


def results_csv(
    rows: Iterable[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    input_columns: Sequence[str] = (),
) -> Iterator[str]:
    """CSV text, one string per line: ``# key: value`` lines naming the job, the model
    version, the TTA and the model's notice (from ``meta``, the job's status; a line only
    where there is a value), the header, then one line per row (RFC 4180: CRLF line ends,
    fields quoted when needed). Input cells come back as given; None is an empty field,
    booleans true/false, flags joined with ';'."""
    meta = meta or {}
    for key in ("id", *MODEL_FIELDS):
        if meta.get(key) is not None:
            text = " ".join(str(meta[key]).split())  # one line, whatever it holds
            yield f"# {'job' if key == 'id' else key}: {text}\r\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: Iterable[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line([*input_columns, *output_names(input_columns)])
    for row in rows:
        given, clean = row.get("input") or {}, clean_row(row)
        cells = [input_text(given.get(c)) for c in input_columns]
        yield line(cells + [_csv_cell(clean[c]) for c in RESULT_COLUMNS])


# ---------------------------------------------------------------------------- JSON
def results_json(
    rows: Iterable[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    input_columns: Sequence[str] = (),
) -> Iterator[str]:
    """A JSON array of row objects, streamed one row per chunk: a large job is never held
    as one string, and the joined chunks are valid JSON. Each object has the input's cells,
    galmet's columns, and ``model_version``, ``tta`` and ``notice`` (from ``meta``)."""
    model = model_meta(meta)
    names = output_names(input_columns, MODEL_FIELDS)
    first = True
    for row in rows:
        given = row.get("input") or {}
        values = [given.get(c) for c in input_columns]
        clean = clean_row(row)
        values += [clean[c] for c in RESULT_COLUMNS] + list(model.values())
        obj = dict(zip([*input_columns, *names], values, strict=True))
        yield ("[\n" if first else ",\n") + json.dumps(obj, allow_nan=False)
        first = False
    yield "[]\n" if first else "\n]\n"
