"""A batch job's results as an astropy Table, written as a VOTable or a FITS binary table.

The rows and columns are those of ``galmet.app.results`` (the input's columns as given, then
galmet's); both formats carry each column's unit, UCD and description, and the job's model
version, TTA and notice: the VOTable as INFO and PARAM elements, FITS as header keywords
(and each column's UCD and description as ``TUCDn`` / ``TCOMMn``, the keywords TOPCAT reads).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from galmet.app.results import (
    DEX_FIELDS,
    FLAG_SEPARATOR,
    INTEGER_COLUMNS,
    RESULT_COLUMNS,
    TEXT_COLUMNS,
    clean_row,
    input_text,
    model_meta,
    output_names,
)
from galmet.record import DEX_DECIMALS

#: Column metadata of VOTable and FITS: (unit, UCD, description). "dex" is not VOUnit, but
#: it is what astropy and TOPCAT read as a logarithmic unit; log_mstar is log10(M*/Msun) in dex.
COLUMN_META: dict[str, tuple[str | None, str | None, str]] = {
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
        "out-of-distribution score: Mahalanobis distance of the image's network features "
        "(or of its pixel statistics, whichever is larger) from the training set's over "
        "sqrt(their number), about 1 for a typical training galaxy; "
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


def _column(values: list[Any], name: str, out_name: str) -> tuple[Any, str | None]:
    """An astropy column (named ``out_name``) of galmet's column ``name`` from a list with
    None for missing (masked), and its UCD."""
    from astropy.table import MaskedColumn

    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    if name in TEXT_COLUMNS:
        data, mask = _text_data(values), np.zeros(len(values), dtype=bool)
    elif name == "row":
        data = np.array(values, dtype=np.int64)
    elif name in INTEGER_COLUMNS:
        data = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
    elif name == "cached":
        data = np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))
    else:
        data = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    unit, ucd, description = COLUMN_META[name]
    column = MaskedColumn(data, name=out_name, mask=mask, unit=unit, description=description)
    return column, ucd


def _text_data(values: list[Any]) -> np.ndarray:
    """Character cells: VOTable has no null for characters (astropy writes a masked one as
    "" and reads it back unmasked), so None is simply "" and nothing is masked: astropy's
    from_table also fails on a masked object cell. Object dtype is written as variable-length
    unicodeChar, not padded to the longest value; with no rows at all astropy cannot type an
    object column, so str it is."""
    texts = ["" if v is None else v if isinstance(v, str) else input_text(v) for v in values]
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


def _unused(base: str, taken: set[str], stem: str | None = None) -> str:
    """``base``, else ``stem_2``, ``stem_3`` … (``stem`` defaults to ``base``): the first
    not in ``taken``, which it joins."""
    stem = base if stem is None else stem
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name)
    return name


def _free_id(base: str, taken: set[str]) -> str:
    """A valid XML ID from ``base`` that is not in ``taken`` (which it joins)."""
    return _unused(re.sub(r"[^A-Za-z0-9_]", "_", base), taken)


def results_table(
    rows: Iterable[dict[str, Any]], input_columns: Sequence[str] = ()
) -> tuple[Any, int, list[str | None]]:
    """The results as an astropy Table with units and descriptions: the input's columns, then
    galmet's (named by ``output_names``). Also the number of input columns and the UCD of
    each of galmet's columns, which the writers put where their format keeps them."""
    from astropy.table import Table

    given: dict[str, list[Any]] = {c: [] for c in input_columns}
    columns: dict[str, list[Any]] = {c: [] for c in RESULT_COLUMNS}
    for row in rows:
        cells, clean = row.get("input") or {}, clean_row(row)
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
    return table, len(mine), [ucd for _, ucd in built]


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

    table, n_input, ucds = results_table(rows, input_columns)
    votable = from_table(table)
    vtable = votable.get_first_table()
    fields = list(vtable.fields)
    for field, name, ucd in zip(fields[n_input:], RESULT_COLUMNS, ucds, strict=True):
        field.ucd = ucd
        if name == "cached":
            field.datatype = "boolean"  # astropy writes numpy bools as "bit"
        elif name in DEX_FIELDS:
            field.precision = str(DEX_DECIMALS)  # 8.9900, as every format rounds it
    for field in fields[:n_input]:
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
    for key, value in model_meta(meta).items():
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


#: FITS header keywords (8 characters at most) of the job's status fields.
_FITS_KEYS = {
    "id": "JOBID",
    "status": "JOBSTAT",
    "n_targets": "NTARGETS",
    "model_version": "MODELVER",
    "tta": "TTA",
    "notice": "NOTICE",
}


def _ascii(text: Any) -> str:
    """Header text: FITS headers are printable ASCII, so anything else is replaced."""
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(str(text).split()))


#: The longest column name a FITS card holds (68 characters, fewer with quotes).
_FITS_NAME_CHARS = 60


def _fits_names(names: Sequence[str]) -> list[str]:
    """Column names FITS accepts: printable ASCII (anything else becomes ``_``), at most
    ``_FITS_NAME_CHARS`` long, and still unique (numbered like repeated input columns)."""
    taken: set[str] = set()
    out = []
    for name in names:
        base = re.sub(r"[^ -~]", "_", name).replace("'", "_")[:_FITS_NAME_CHARS].rstrip() or "col"
        out.append(_unused(base, taken, base[: _FITS_NAME_CHARS - 4]))
    return out


def _fits_ready(table: Any) -> None:
    """Columns as FITS can store them, in place: names FITS accepts (the name as given kept
    in the description), text as UTF-8 bytes at least one wide (FITS has no variable-length
    strings; a width of 0 is illegal), and integers with a null value no real cell uses
    (astropy's default, 999999, could be a user's value)."""
    from astropy.table import MaskedColumn

    for name, fits_name in zip(table.colnames, _fits_names(table.colnames), strict=True):
        if fits_name != name:
            table[name].description += f" (column {ascii(name)})"
            table.rename_column(name, fits_name)
    for name in table.colnames:
        column = table[name]
        if column.dtype.kind in "OU":
            data = [str(v).encode("utf-8") for v in column.tolist()]
            width = max((len(v) for v in data), default=0) or 1
            table[name] = MaskedColumn(
                np.array(data, dtype=f"S{width}"),
                name=name,
                mask=np.zeros(len(data), dtype=bool),
                description=column.description,
            )
        elif column.dtype.kind in "iu" and isinstance(column, MaskedColumn):
            column.fill_value = np.iinfo(np.int64).min


def results_fits(
    rows: Iterable[dict[str, Any]], meta: dict[str, Any], input_columns: Sequence[str] = ()
) -> bytes:
    """The results as a FITS file: an empty primary HDU and one binary table (EXTNAME
    ``GALMET``) with units (``TUNITn``), UCDs (``TUCDn``) and descriptions (``TCOMMn``).
    Null floats are NaN, null integers ``TNULLn``, text is UTF-8 (empty where none). The job
    id, status, model version, TTA and notice are header keywords of the table."""
    from astropy.io import fits

    table, n_input, ucds = results_table(rows, input_columns)
    table.meta.clear()  # "description" is no FITS keyword; it goes into EXTNAME and a comment
    _fits_ready(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dex" is not a FITS-standard unit; written as is
        hdu = fits.table_to_hdu(table)
    header = hdu.header
    header["EXTNAME"] = ("GALMET", "galmet batch job results")
    header.add_comment("galmet batch job results: one row per submitted target")
    all_ucds = [None] * n_input + list(ucds)
    for k, name in enumerate(table.colnames, start=1):
        unit = table[name].unit
        if unit is not None and f"TUNIT{k}" not in header:  # dex: dropped as non-standard
            header[f"TUNIT{k}"] = str(unit)
        if all_ucds[k - 1]:
            header[f"TUCD{k}"] = all_ucds[k - 1]
        description = table[name].description
        if description:
            header[f"TCOMM{k}"] = _ascii(description)
    for key, keyword in _FITS_KEYS.items():
        value = meta.get(key)
        if value is not None:
            value = value if key in ("tta", "n_targets") else _ascii(value)
            # a comment only where it fits on the card: astropy warns when it cuts one
            header[keyword] = (value, key) if len(str(value)) < 40 else value
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    return out.getvalue()
