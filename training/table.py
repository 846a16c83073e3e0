"""A catalog CSV in memory, column by column: what training needs without astropy.

``galmet train`` runs on bare GPU machines that have NumPy but not astropy; the training
data's ``catalog.csv`` is a plain table of numbers (and perhaps some text), so this reads it
with the standard library's ``csv`` and keeps each column as one NumPy array. A column of
integers is int64 (SDSS objIDs need all 64 bits), one of numbers float64 with an empty
field as NaN, anything else str. Indexing follows astropy's ``Table`` where training,
evaluation and the baseline use it: ``t["col"]`` is a column, ``t[rows]`` (an index array,
a mask or a slice) a new table, ``t[i]`` and iteration give rows as dicts.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from galmet.errors import GalmetError


def _column(values: list[str]) -> np.ndarray:
    """The narrowest of int64, float64 (empty fields NaN) or str that holds every value."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.array([float(v) if v.strip() else np.nan for v in values], dtype=float)
    except ValueError:
        return np.array(values, dtype=str)


class CatalogTable:
    """Named columns of equal length, each a NumPy array."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        lengths = {len(c) for c in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {sorted(lengths)}")
        self.columns = {name: np.asarray(c) for name, c in columns.items()}

    @property
    def colnames(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        if isinstance(key, int | np.integer):
            return {name: c[key] for name, c in self.columns.items()}
        return CatalogTable({name: c[key] for name, c in self.columns.items()})

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def sorted_by(self, name: str) -> CatalogTable:
        """The rows in ascending order of column ``name`` (a stable sort)."""
        return self[np.argsort(self.columns[name], kind="stable")]


def read_csv_table(path: Path) -> CatalogTable:
    """Read a CSV file with a header row; a clear error if it is not one."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise GalmetError(f"{path} is empty: a catalog needs a header row")
        rows = [r for r in reader if r]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise GalmetError(
            f"{path} row {bad + 2} has {len(rows[bad])} fields, the header {len(header)}"
        )
    names = [h.strip() for h in header]
    return CatalogTable({n: _column([r[j] for r in rows]) for j, n in enumerate(names)})
