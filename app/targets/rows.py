"""One target of a batch job: the row model, its checks, the column names, and the errors.

Every reader (CSV, JSON, VOTable) turns its cells into a ``TargetRow`` with ``make_row``, so
a row is checked the same way whatever the format, and finds its columns with the same
names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from galmet.sky import parse_dec, parse_ra

#: Accepted column names (lower case), best first. RA/Dec names are the usual ones of SDSS,
#: VizieR (RAJ2000, DEJ2000, RA_ICRS, DE_ICRS) and TOPCAT exports; none with a unit other
#: than degrees, since a number is read as degrees (sexagesimal strings as hours for RA).
RA_NAMES = ("ra", "ra_deg", "radeg", "raj2000", "ra_j2000", "ra_icrs", "right_ascension")
DEC_NAMES = (
    "dec",
    "dec_deg",
    "decdeg",
    "dej2000",
    "decj2000",
    "dec_j2000",
    "de_icrs",
    "dec_icrs",
    "declination",
)
ID_NAMES = ("id", "objid", "name")
#: A target's own Petrosian radius (arcsec, r band) for a petro-scaled model, SDSS's name first.
PETRO_NAMES = ("petror90_r", "petror90", "petro_r90")
ALIASES = ((RA_NAMES, "ra"), (DEC_NAMES, "dec"), (ID_NAMES, "id"))

#: ``JobTarget.target_id`` is ``String(200)``: a longer id would fail the job's INSERT.
MAX_ID_LENGTH = 200
MAX_REASON = 300  # a row's reason quotes the bad value; keep it short enough to read


@dataclass(frozen=True)
class TargetRow:
    """One data row of the input: its number, the user's id, and checked coordinates."""

    row: int  # 1-based number of the data row (header not counted; JSON: list index + 1)
    id: str | None  # the user's id column, as text (None when absent or empty)
    ra: float | None  # decimal degrees, None when the row is invalid
    dec: float | None
    error: str | None  # one-line reason when the row is invalid, else None
    #: The row's cells as the user gave them, by column name (JSON-able: text, numbers,
    #: booleans, None), so the results can give the user's table back. Not compared: two
    #: rows are the same target whatever else they carry.
    cells: dict[str, Any] | None = field(default=None, compare=False, repr=False)


class TargetsError(ValueError):
    """The whole input is unusable: an HTTP status (400, 413, 415 or 422) and a one-line
    reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def one_line_reason(text: str, limit: int = MAX_REASON) -> str:
    """``text`` on one line, cut to ``limit`` characters with "…". Not ``galmet.text.one_line``:
    that one strips HTML tags, which would eat a ``<``-quoted value from the user's row."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _coordinate(value: Any, name: str) -> float:
    """Degrees from one cell, via ``galmet.sky``; ValueError with a one-line reason."""
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, np.generic):  # VOTable cells; the parsers take Python numbers and str
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, int | float | str) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number or an angle string")
    try:
        return parse_ra(value, name) if name == "ra" else parse_dec(value, name)
    except OverflowError:  # float() of a huge JSON integer
        raise ValueError(f"{name} is out of range") from None


def _id_text(value: Any) -> str | None:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("id must be a string or a number")
    return str(value).strip() or None


def make_row(
    row: int, ra: Any, dec: Any, ident: Any = None, cells: dict[str, Any] | None = None
) -> TargetRow:
    """A checked row from raw cells; every problem of the row goes into ``error``.
    ``cells`` is the whole input row, kept as given (see ``TargetRow.cells``)."""
    problems: list[str] = []
    try:
        id_text = _id_text(ident)
    except ValueError as exc:
        id_text, problems = None, [str(exc)]
    if id_text is not None and len(id_text) > MAX_ID_LENGTH:
        problems.append(f"id is longer than {MAX_ID_LENGTH} characters")
        id_text = id_text[:MAX_ID_LENGTH]  # still stored (truncated) so the row can be found
    degrees: list[float] = []
    for value, name in ((ra, "ra"), (dec, "dec")):
        try:
            degrees.append(_coordinate(value, name))
        except ValueError as exc:
            problems.append(str(exc))  # both coordinates are checked: report every problem
    if problems:
        reason = one_line_reason(f"row {row}: " + "; ".join(problems))
        return TargetRow(row, id_text, None, None, reason, cells)
    return TargetRow(row, id_text, degrees[0], degrees[1], None, cells)


def json_cell(value: Any) -> Any:
    """A cell as the database's JSON column can hold it: numpy scalars and arrays as Python
    values, bytes as text, NaN and infinities as None (strict JSON has none)."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_cell(v) for k, v in value.items()}
    return value


def unique_names(names: Iterable[Any]) -> list[str]:
    """Column names as the results will show them: stripped, a blank one named by its
    position (``col3``), a repeated one numbered (``mag``, ``mag_2``)."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names, start=1):
        base = str(name).strip() or f"col{i}"
        unique, k = base, 1
        while unique in seen:
            k += 1
            unique = f"{base}_{k}"
        seen.add(unique)
        out.append(unique)
    return out


def norm_name(name: Any) -> str:
    """A column name or JSON key as it is matched: stripped, lower case."""
    return str(name).strip().lower()


def pick_column(names: Sequence[str], wanted: Iterable[str], what: str) -> int | None:
    """Index of the first accepted name present in ``names`` (already normalised)."""
    for alias in wanted:
        hits = [i for i, n in enumerate(names) if n == alias]
        if len(hits) > 1:
            raise TargetsError(422, f"the {what} column {alias!r} appears {len(hits)} times")
        if hits:
            return hits[0]
    return None


def _found(names: Sequence[str]) -> str:
    shown = ", ".join(one_line_reason(repr(n), 40) for n in names[:20])
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return (shown or "none") + more


def missing_columns(ra: object, dec: object, names: Sequence[str]) -> TargetsError:
    """The 422 for an input without an ra or dec column (whichever index is None)."""
    what = " or ".join(w for w, i in (("ra", ra), ("dec", dec)) if i is None)
    return TargetsError(
        422,
        f"the targets need ra and dec columns; no {what} among the columns found: {_found(names)}",
    )


def find_columns(names: Sequence[str]) -> tuple[int, int, int | None]:
    """(ra, dec, id) column indices, or TargetsError naming the columns found."""
    ra, dec = pick_column(names, RA_NAMES, "ra"), pick_column(names, DEC_NAMES, "dec")
    if ra is None or dec is None:
        raise missing_columns(ra, dec, names)
    return ra, dec, pick_column(names, ID_NAMES, "id")


def too_many(max_targets: int) -> TargetsError:
    """The 413 for an input over the cap on targets."""
    return TargetsError(
        413, f"the job has more than {max_targets} targets (GALMET_MAX_JOB_TARGETS)"
    )


def no_targets() -> TargetsError:
    """The 422 for an input without a single data row."""
    return TargetsError(422, "the job has no targets")


def given_petro_radius(cells: dict[str, Any] | None) -> float | None:
    """The target's own ``petroR90_r`` (a column named as in ``PETRO_NAMES``, any case), or
    None when the input has no such column or the cell is empty. A cell that is not a
    positive number raises ValueError saying so."""
    by_name = {norm_name(k): (k, v) for k, v in (cells or {}).items()}
    found = next((n for n in PETRO_NAMES if n in by_name), None)
    name, value = (None, None) if found is None else by_name[found]
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        radius = float(value)
    except (TypeError, ValueError):
        radius = math.nan
    if isinstance(value, bool) or not math.isfinite(radius) or radius <= 0:
        shown = one_line_reason(repr(value), 40)
        raise ValueError(f"the row's {name} must be a positive number of arcsec, not {shown}")
    return radius
