"""A batch job's results as JSON, CSV or VOTable: the user's table given back, row for row.

Every input row comes back in the order given, with every input column first (as given) and
galmet's columns (``RESULT_COLUMNS``) after them; a galmet column whose name the input
already uses is prefixed ``galmet_`` (the input's ``ra`` stays the user's text, ``galmet_ra``
is the position in degrees that was predicted). Each row dict (built from the database by
``galmet.app.jobs``) has exactly the keys of ``RESULT_COLUMNS``, and the input row's cells
under ``"input"``. None is an empty CSV field, JSON ``null``, and a masked (null) VOTable cell.

Values in dex (metallicity, mass and their errors) are rounded to ``DEX_DECIMALS`` (4)
decimals and separations to a milliarcsecond, the same in every format; RA/Dec keep all their
digits (``%.6g`` would round 150.123456 to 150.123, 0.4 arcsec off). Every format names the
model version and TTA the predictions came from, and the model's notice (the mock-sky demo's
"not for science"): CSV as ``# key: value`` header lines, JSON as fields of every row,
VOTable as INFO and PARAM elements.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

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
_INTEGERS = ("objID", "type")
_TEXTS = ("id", "status", "flags", "reason")
FLAG_SEPARATOR = ";"
#: Fields in dex, rounded to DEX_DECIMALS (again: a row may come from an older cache).
DEX_FIELDS = ("oh_p50", "oh_sigma", "oh_p16", "oh_p84", "log_mstar", "log_mstar_sigma")
DEX_FIELDS += ("oh_tta_spread",)
ARCSEC_DECIMALS = 3
#: What the predictions came from: CSV header lines, JSON fields of every row, VOTable PARAMs.
MODEL_FIELDS = ("model_version", "tta", "notice")
#: The prefix of a galmet column whose name the input already has.
PREFIX = "galmet_"

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


def _clean(row: dict[str, Any]) -> dict[str, Any]:
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


def _model_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
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


def _input_cell(value: Any) -> str:
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
        given, clean = row.get("input") or {}, _clean(row)
        cells = [_input_cell(given.get(c)) for c in input_columns]
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
    model = _model_meta(meta)
    names = output_names(input_columns, MODEL_FIELDS)
    first = True
    for row in rows:
        given = row.get("input") or {}
        values = [given.get(c) for c in input_columns]
        clean = _clean(row)
        values += [clean[c] for c in RESULT_COLUMNS] + list(model.values())
        obj = dict(zip([*input_columns, *names], values, strict=True))
        yield ("[\n" if first else ",\n") + json.dumps(obj, allow_nan=False)
        first = False
    yield "[]\n" if first else "\n]\n"


# ---------------------------------------------------------------------------- VOTable
def _column(values: list[Any], name: str, out_name: str) -> tuple[Any, str | None]:
    """An astropy column (named ``out_name``) of galmet's column ``name`` from a list with
    None for missing (masked), and its UCD."""
    from astropy.table import MaskedColumn

    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    if name in _TEXTS:
        data, mask = _text_data(values), np.zeros(len(values), dtype=bool)
    elif name == "row":
        data = np.array(values, dtype=np.int64)
    elif name in _INTEGERS:
        data = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
    elif name == "cached":
        data = np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))
    else:
        data = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    unit, ucd, description = _VOTABLE_FIELDS[name]
    column = MaskedColumn(data, name=out_name, mask=mask, unit=unit, description=description)
    return column, ucd


def _text_data(values: list[Any]) -> np.ndarray:
    """Character cells: VOTable has no null for characters (astropy writes a masked one as
    "" and reads it back unmasked), so None is simply "" and nothing is masked: astropy's
    from_table also fails on a masked object cell. Object dtype is written as variable-length
    unicodeChar, not padded to the longest value; with no rows at all astropy cannot type an
    object column, so str it is."""
    texts = ["" if v is None else v if isinstance(v, str) else _input_cell(v) for v in values]
    return np.array(texts, dtype=object if values else str)


def _int_text(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[+-]?(0|[1-9][0-9]{0,17})", v.strip()) is not None


def _float_text(v: Any) -> bool:
    try:
        return isinstance(v, str) and math.isfinite(float(v))
    except ValueError:
        return False


def _input_column(values: list[Any], name: str) -> Any:
    """An input column as the VOTable types it: booleans, integers or reals where every
    present cell is one (a CSV's text cells too, when each reads as a number: a CSV cannot
    say), else text (lists and objects as JSON). Missing cells are masked."""
    from astropy.table import MaskedColumn

    present = [v for v in values if v is not None and v != ""]
    mask = np.fromiter((v is None or v == "" for v in values), dtype=bool, count=len(values))
    description = "from the submitted target list, as given"
    if present and all(isinstance(v, bool) for v in present):
        data = np.array([bool(v) for v in values], dtype=bool)
    elif present and all(
        (isinstance(v, int) and not isinstance(v, bool)) or _int_text(v) for v in present
    ):
        data = np.array([0 if m else int(v) for v, m in zip(values, mask, strict=True)])
    elif present and all(
        (isinstance(v, int | float) and not isinstance(v, bool)) or _float_text(v) for v in present
    ):
        data = np.array([math.nan if m else float(v) for v, m in zip(values, mask, strict=True)])
    else:
        data, mask = _text_data(values), np.zeros(len(values), dtype=bool)
    return MaskedColumn(data, name=name, mask=mask, description=description)


def _free_id(base: str, taken: set[str]) -> str:
    """A valid XML ID from ``base`` that is not in ``taken`` (which it joins)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    ident, k = base, 1
    while ident in taken:
        k += 1
        ident = f"{base}_{k}"
    taken.add(ident)
    return ident


def results_votable(
    rows: Iterable[dict[str, Any]], meta: dict[str, Any], input_columns: Sequence[str] = ()
) -> bytes:
    """The results as a VOTable (TABLEDATA, readable by TOPCAT and astropy): the input's
    columns, then galmet's. None values are null cells; character cells have no null in
    VOTable, so a missing id or reason reads back as an empty string. ``meta`` (job id, model
    version, tta, notice...) is written as INFO elements of the resource, and the model
    version, TTA and notice as PARAMs of the table too."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info, Param
    from astropy.table import Table

    given: dict[str, list[Any]] = {c: [] for c in input_columns}
    columns: dict[str, list[Any]] = {c: [] for c in RESULT_COLUMNS}
    for row in rows:
        cells, clean = row.get("input") or {}, _clean(row)
        clean["flags"] = FLAG_SEPARATOR.join(clean["flags"])
        for c in input_columns:
            given[c].append(cells.get(c))
        for c in RESULT_COLUMNS:
            columns[c].append(clean[c])
    names = output_names(input_columns)
    built = [_column(columns[c], c, n) for c, n in zip(RESULT_COLUMNS, names, strict=True)]
    mine = [_input_column(given[c], c) for c in input_columns]
    table = Table([*mine, *(col for col, _ in built)])
    table.meta["description"] = "galmet batch job results: one row per submitted target"
    votable = from_table(table)
    vtable = votable.get_first_table()
    fields = list(vtable.fields)
    for field, (name, (_, ucd)) in zip(
        fields[len(mine) :], zip(RESULT_COLUMNS, built, strict=True), strict=True
    ):
        field.ucd = ucd
        if name == "cached":
            field.datatype = "boolean"  # astropy writes numpy bools as "bit"
        elif name in DEX_FIELDS:
            field.precision = str(DEX_DECIMALS)  # 8.9900, as every format rounds it
    for field in fields[: len(mine)]:
        if field.datatype == "bit":
            field.datatype = "boolean"
    resource = votable.resources[0]
    # INFO and PARAM IDs share the document's ID space with the FIELDs ("id" would clash),
    # so they get a prefix, and a number where the user's columns took that ID already; the
    # name is the key as given.
    taken = {f.ID for f in fields}
    for key, value in meta.items():
        text = "" if value is None else str(value)
        ident = _free_id("job_" + str(key), taken)
        resource.infos.append(Info(ID=ident, name=str(key), value=text))
    for key, value in _model_meta(meta).items():
        if value is None:
            continue
        kind = {"datatype": "int"} if key == "tta" else {"datatype": "char", "arraysize": "*"}
        ident = _free_id(f"param_{key}", taken)
        vtable.params.append(
            Param(votable, ID=ident, name=key, value=value, ucd="meta.note", **kind)
        )
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # W50 for "dex", which VOUnit does not list
        # The pure-Python TABLEDATA writer: astropy's C writer overflows its row buffer by
        # one byte for some rows (astropy issue #20419, open in 8.0), corrupting the heap
        # and crashing the service later at a random point. A one-row reproduction is in
        # tests/test_results.py.
        votable.to_xml(out, _debug_python_based_parser=True)
    return out.getvalue()
