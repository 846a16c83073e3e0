"""FITS target lists: the first table extension (binary or ASCII), columns found by name or
else by UCD (``TUCDn``, as TOPCAT writes it), angles in any unit converted to degrees."""

from __future__ import annotations

import io
import warnings
from typing import Any, BinaryIO

import numpy as np

from galmet.app.targets.columns import rows_from_columns
from galmet.app.targets.rows import TargetRow, TargetsError, one_line_reason


def parse_fits_targets(stream: BinaryIO, max_targets: int) -> list[TargetRow]:
    """Rows of the first table HDU of a FITS file: null cells (``TNULLn``, NaN, empty text)
    are missing values, and each row is checked like a CSV row."""
    from astropy.io import fits
    from astropy.table import Table

    data = stream.read()  # the upload is capped in bytes before it gets here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard units and keywords are noise here
            hdus = fits.open(io.BytesIO(data), memmap=False)
            index = next(
                (i for i, h in enumerate(hdus) if isinstance(h, fits.BinTableHDU | fits.TableHDU)),
                None,
            )
            if index is None:
                raise TargetsError(422, "the FITS file has no table (images are not targets)")
            header = hdus[index].header
            table = Table.read(hdus, hdu=index)
    except TargetsError:
        raise
    except Exception as exc:  # truncated files, bad headers, unreadable columns
        raise TargetsError(400, one_line_reason(f"cannot read the FITS file: {exc}")) from None
    names = table.colnames
    columns = [_masked(table[n]) for n in names]
    ucds = [header.get(f"TUCD{k}") for k in range(1, len(names) + 1)]
    return rows_from_columns(names, ucds, [table[n].unit for n in names], columns, max_targets)


def _masked(column: Any) -> np.ma.MaskedArray:
    """A column as a masked array: astropy masks TNULL and NaN cells; empty text is
    missing too, as an empty CSV field is."""
    array = np.ma.asarray(column)
    if array.dtype.kind in "US" and array.ndim == 1:
        # FITS text is bytes; galmet writes UTF-8, and anything else is kept readable
        texts = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.data.tolist()
        ]
        empty = np.array([not t.strip() for t in texts], dtype=bool)
        array = np.ma.array(np.array(texts, dtype=object), mask=np.ma.getmaskarray(array) | empty)
    return array
