"""VOTable target lists: the first table, columns found by name or else by UCD, angles in
any unit converted to degrees."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np
from astropy import units as u

from galmet.app.targets.rows import (
    ALIASES,
    TargetRow,
    TargetsError,
    json_cell,
    make_row,
    missing_columns,
    no_targets,
    norm_name,
    one_line_reason,
    pick_column,
    too_many,
    unique_names,
)


def _votable_field(fields: Sequence[Any], ucd: str) -> int | None:
    """A field by UCD (e.g. pos.eq.ra as the primary word), preferring ``meta.main``."""
    hits = []
    for i, f in enumerate(fields):
        words = [w.strip().lower() for w in (f.ucd or "").split(";")]
        if words[0] == ucd:
            hits.append((0 if "meta.main" in words else 1, i))
    return min(hits)[1] if hits else None


def _degrees(column: np.ma.MaskedArray, unit: Any, what: str) -> np.ma.MaskedArray:
    """Numeric cells in degrees: converted when the field's unit is another angle (rad,
    arcsec, hourangle); no unit or an unknown one is taken as degrees."""
    if unit is None or isinstance(unit, u.UnrecognizedUnit) or column.dtype.kind not in "iuf":
        return column
    try:
        return column.astype(float) * unit.to(u.deg)
    except u.UnitConversionError:
        raise TargetsError(422, f"the {what} column has unit {unit!s}, not an angle") from None


def parse_votable_targets(stream: BinaryIO, max_targets: int) -> list[TargetRow]:
    """Rows of the first table of a VOTable. Columns are found by name (like CSV), else by
    UCD (``pos.eq.ra``, ``pos.eq.dec``, ``meta.id``)."""
    from astropy.io.votable import parse

    if not stream.seekable():  # astropy's parser seeks; the whole table is read anyway
        stream = io.BytesIO(stream.read())
    try:
        with warnings.catch_warnings():
            # verify="ignore" drops spec pedantry; what remains is noise for a server log
            warnings.simplefilter("ignore")
            votable = parse(stream, verify="ignore")
    except Exception as exc:  # expat, astropy's VOTable errors and others: all unreadable
        raise TargetsError(400, one_line_reason(f"cannot read the VOTable: {exc}")) from None
    try:
        table = votable.get_first_table()
    except IndexError:
        raise TargetsError(422, "the VOTable has no table") from None
    fields = list(table.fields)
    names = [norm_name(f.name) for f in fields]
    cols = [pick_column(names, aliases, what) for aliases, what in ALIASES]
    for k, ucd in enumerate(("pos.eq.ra", "pos.eq.dec", "meta.id")):
        if cols[k] is None:
            cols[k] = _votable_field(fields, ucd)
    ra_i, dec_i, id_i = cols
    if ra_i is None or dec_i is None:
        raise missing_columns(ra_i, dec_i, names)
    array = table.array
    n = len(array)
    if n == 0:
        raise no_targets()
    if n > max_targets:
        raise too_many(max_targets)
    cells = []
    for i, what in ((ra_i, "ra"), (dec_i, "dec"), (id_i, "id")):
        if i is None:
            cells.append([None] * n)
            continue
        column = array[array.dtype.names[i]]
        if column.ndim > 1:
            raise TargetsError(422, f"the {what} column holds arrays, not one value per row")
        if what != "id":
            column = _degrees(column, fields[i].unit, what)
        mask = np.ma.getmaskarray(column)
        # tolist() turns numpy scalars into Python ones; masked (null) cells become None
        cells.append([None if m else v for v, m in zip(column.data.tolist(), mask, strict=True)])
    every = _all_cells(array, unique_names(f.name or f.ID for f in fields))
    return [
        make_row(row, ra, dec, ident, every[row - 1])
        for row, (ra, dec, ident) in enumerate(zip(*cells, strict=True), start=1)
    ]


def _all_cells(array: np.ma.MaskedArray, names: list[str]) -> list[dict[str, Any]]:
    """Every row's cells by column name, as given (null cells None), for the results."""
    columns = []
    for key in array.dtype.names:
        column = array[key]
        values = [json_cell(v) for v in column.data.tolist()]
        if column.ndim == 1:
            mask = np.ma.getmaskarray(column)
            values = [None if m else v for v, m in zip(values, mask, strict=True)]
        columns.append(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
