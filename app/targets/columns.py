"""Target rows from typed tables (VOTable, FITS): columns found by name like CSV, else by
UCD, angles in any unit converted to degrees, every cell kept for the results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    pick_column,
    too_many,
    unique_names,
)

#: The UCD each of ra, dec and id is found by when no column has an accepted name.
UCDS = ("pos.eq.ra", "pos.eq.dec", "meta.id")


def _by_ucd(ucds: Sequence[str | None], ucd: str) -> int | None:
    """A column by UCD (e.g. pos.eq.ra as the primary word), preferring ``meta.main``."""
    hits = []
    for i, text in enumerate(ucds):
        words = [w.strip().lower() for w in (text or "").split(";")]
        if words[0] == ucd:
            hits.append((0 if "meta.main" in words else 1, i))
    return min(hits)[1] if hits else None


def _degrees(column: np.ma.MaskedArray, unit: Any, what: str) -> np.ma.MaskedArray:
    """Numeric cells in degrees: converted when the column's unit is another angle (rad,
    arcsec, hourangle); no unit or an unknown one is taken as degrees."""
    if unit is None or isinstance(unit, u.UnrecognizedUnit) or column.dtype.kind not in "iuf":
        return column
    try:
        return column.astype(float) * unit.to(u.deg)
    except u.UnitConversionError:
        raise TargetsError(422, f"the {what} column has unit {unit!s}, not an angle") from None


def rows_from_columns(
    names: Sequence[str | None],
    ucds: Sequence[str | None],
    units: Sequence[Any],
    columns: Sequence[np.ma.MaskedArray],
    max_targets: int,
) -> list[TargetRow]:
    """Checked rows from a table's columns (masked arrays, null cells masked) with their
    names, UCDs and units (astropy units or None)."""
    normal = [norm_name(n or "") for n in names]
    cols = [pick_column(normal, aliases, what) for aliases, what in ALIASES]
    for k, ucd in enumerate(UCDS):
        if cols[k] is None:
            cols[k] = _by_ucd(ucds, ucd)
    ra_i, dec_i, id_i = cols
    if ra_i is None or dec_i is None:
        raise missing_columns(ra_i, dec_i, normal)
    n = len(columns[0]) if columns else 0
    if n == 0:
        raise no_targets()
    if n > max_targets:
        raise too_many(max_targets)
    cells = []
    for i, what in ((ra_i, "ra"), (dec_i, "dec"), (id_i, "id")):
        if i is None:
            cells.append([None] * n)
            continue
        column = np.ma.asarray(columns[i])
        if column.ndim > 1:
            raise TargetsError(422, f"the {what} column holds arrays, not one value per row")
        if what != "id":
            column = _degrees(column, units[i], what)
        mask = np.ma.getmaskarray(column)
        # tolist() turns numpy scalars into Python ones; masked (null) cells become None
        cells.append([None if m else v for v, m in zip(column.data.tolist(), mask, strict=True)])
    every = _all_cells(columns, unique_names(names))
    return [
        make_row(row, ra, dec, ident, every[row - 1])
        for row, (ra, dec, ident) in enumerate(zip(*cells, strict=True), start=1)
    ]


def _all_cells(columns: Sequence[np.ma.MaskedArray], names: list[str]) -> list[dict[str, Any]]:
    """Every row's cells by column name, as given (null cells None), for the results."""
    values_by_column = []
    for column in columns:
        column = np.ma.asarray(column)
        values = [json_cell(v) for v in column.data.tolist()]
        if column.ndim == 1:
            mask = np.ma.getmaskarray(column)
            values = [None if m else v for v, m in zip(values, mask, strict=True)]
        values_by_column.append(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*values_by_column, strict=True)]
