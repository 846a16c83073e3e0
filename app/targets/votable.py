"""VOTable target lists: the first table, columns found by name or else by UCD, angles in
any unit converted to degrees."""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

from galmet.app.targets.columns import rows_from_columns
from galmet.app.targets.rows import TargetRow, TargetsError, one_line_reason


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
    array = table.array
    return rows_from_columns(
        [f.name or f.ID for f in fields],
        [f.ucd for f in fields],
        [f.unit for f in fields],
        [array[key] for key in array.dtype.names],
        max_targets,
    )
