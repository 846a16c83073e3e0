"""The paper's sample: the catalog's columns and the cuts that select its galaxies.

The cuts (DESIGN.md "Sample") are defined once, here, and read two ways: as the WHERE
clause of ``galmet catalog``'s SkyServer query (``sql_where``) and as a NumPy mask over a
table with the same columns (``mask``), which the mock sky uses to know which of its
objects the query must return. Both readings come from the same ``Cut`` list, so the
real query and the mock cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

#: What the cuts read from: an astropy Table or a dict of column arrays.
Rows = Table | Mapping[str, Any]

BANDS = "ugriz"
#: Columns of ``catalog.csv``, in the order ``galmet catalog`` writes them.
CATALOG_COLUMNS: list[str] = (
    ["objID", "ra", "dec", "z", "zErr"]
    + [f"modelMag_{b}" for b in BANDS]
    + [f"modelMagErr_{b}" for b in BANDS]
    + [f"petroMag_{b}" for b in BANDS]
    + [f"petroMagErr_{b}" for b in BANDS]
    + [
        "petroR50_r",
        "petroR90_r",
        "oh_p16",
        "oh_p50",
        "oh_p84",
        "lgm_tot_p50",
        "sfr_tot_p50",
        "bptclass",
    ]
)
MISSING = -9999.0  # MPA-JHU's value for "not measured"


@dataclass(frozen=True)
class Cut:
    """One cut of the selection on a value: a column, or ``column - minus`` (a colour).

    A row passes when ``low < value < high`` (``<=`` where not ``strict``; a bound left
    None is open) and, with ``exclude`` set, ``value != exclude``.
    """

    column: str
    low: float | None = None
    high: float | None = None
    strict: bool = True
    minus: str | None = None
    exclude: float | None = None

    def sql(self, qualify: Callable[[str], str] = str) -> str:
        """The cut as SQL; ``qualify`` turns a column name into the query's (``p.z``)."""
        value = qualify(self.column)
        if self.minus is not None:
            value += f" - {qualify(self.minus)}"
        terms = []
        if self.exclude is not None:
            terms.append(f"{value} != {_number(self.exclude)}")
        if self.low is not None:
            terms.append(f"{value} {'>' if self.strict else '>='} {_number(self.low)}")
        if self.high is not None:
            terms.append(f"{value} {'<' if self.strict else '<='} {_number(self.high)}")
        return " AND ".join(terms)

    def mask(self, table: Rows) -> np.ndarray:
        """Boolean mask of the rows of ``table`` (Table, dict of arrays) that pass."""
        value = _column(table, self.column)
        if self.minus is not None:
            value = value - _column(table, self.minus)
        ok = np.ones(value.shape, dtype=bool)
        if self.exclude is not None:
            ok &= value != self.exclude
        if self.low is not None:
            ok &= value > self.low if self.strict else value >= self.low
        if self.high is not None:
            ok &= value < self.high if self.strict else value <= self.high
        return ok


#: The paper's cuts, in the order the query lists them.
SAMPLE_CUTS: list[Cut] = [
    Cut("petroMag_r", 10, 18),
    Cut("modelMag_u", 0, 6, minus="modelMag_r"),
    *(Cut(f"modelMag_{b}", 10, 25) for b in BANDS),
    Cut("rChi2", high=2),
    Cut("zErr", 0, 0.01),
    Cut("z", low=0.02),
    Cut("oh_p50", exclude=MISSING),
]
#: Added where stellar mass is a target: MPA-JHU has a mass for the galaxy.
MASS_CUT = Cut("lgm_tot_p50", low=0)


def cuts(with_mass: bool = False) -> list[Cut]:
    """The selection's cuts; ``with_mass`` adds ``MASS_CUT``."""
    return SAMPLE_CUTS + [MASS_CUT] if with_mass else list(SAMPLE_CUTS)


def sql_where(qualify: Callable[[str], str] = str, with_mass: bool = False) -> str:
    """The cuts as the conditions of a WHERE clause, one per line, joined by AND;
    ``qualify`` turns a column name into the query's (``p.z``)."""
    return "\n  AND ".join(cut.sql(qualify) for cut in cuts(with_mass))


def mask(table: Rows, with_mass: bool = False) -> np.ndarray:
    """The selection as a boolean mask over the rows of ``table``."""
    return np.logical_and.reduce([cut.mask(table) for cut in cuts(with_mass)])


def _column(table: Rows, name: str) -> np.ndarray:
    return np.asarray(table[name], dtype=float)


def _number(value: float) -> str:
    # 15 significant digits: integers print without ".0" (-9999, as SkyServer's tables hold
    # it), and no bound is rounded.
    return f"{value:.15g}"
