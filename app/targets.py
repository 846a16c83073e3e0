"""A batch job's target list: CSV, JSON or VOTable in, one checked ``TargetRow`` per row out.

Every data row becomes a ``TargetRow``, numbered from 1 in input order (header, comments and
blank lines not counted). A row whose coordinates do not parse keeps its place with ``error``
set, so that the results can report it while the good rows are predicted. Coordinates are
checked by the service's own parser (``app.coords``), so a batch accepts exactly what a single
prediction accepts. Problems with the whole input raise ``TargetsError`` (a 4xx and a
one-line reason): no targets, no ra/dec column, too many targets, unreadable or unsupported
files. CSV is streamed: the cap on targets is enforced as rows are read, before the rest of
an oversized file is.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from astropy import units as u

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
_ALIASES = ((RA_NAMES, "ra"), (DEC_NAMES, "dec"), (ID_NAMES, "id"))

#: ``JobTarget.target_id`` is ``String(200)``: a longer id would fail the job's INSERT.
MAX_ID_LENGTH = 200
#: No target line is anywhere near this long; the cap stops one enormous "line" (a file
#: without newlines) from being read into memory whole.
MAX_LINE_CHARS = 65_536
_MAX_REASON = 300  # a row's reason quotes the bad value; keep it short enough to read

_CSV_TYPES = {
    "text/csv",
    "application/csv",
    "text/x-csv",
    "text/comma-separated-values",
    "text/tab-separated-values",
    "application/vnd.ms-excel",  # what Windows browsers send for a .csv file
}
_JSON_TYPES = {"application/json", "text/json"}
_VOTABLE_TYPES = {
    "application/x-votable+xml",
    "application/votable+xml",
    "text/xml",
    "application/xml",
}
#: Types that say nothing about the content: decide by extension, then by sniffing.
#: ``application/x-www-form-urlencoded`` is what ``curl --data-binary @file`` sends.
_VAGUE_TYPES = {
    "",
    "application/octet-stream",
    "binary/octet-stream",
    "text/plain",
    "application/x-www-form-urlencoded",
}
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".xml": "votable",
    ".vot": "votable",
    ".votable": "votable",
}
_SNIFF_BYTES = 4096


@dataclass(frozen=True)
class TargetRow:
    """One data row of the input: its number, the user's id, and checked coordinates."""

    row: int  # 1-based number of the data row (header not counted; JSON: list index + 1)
    id: str | None  # the user's id column, as text (None when absent or empty)
    ra: float | None  # decimal degrees, None when the row is invalid
    dec: float | None
    error: str | None  # one-line reason when the row is invalid, else None


class TargetsError(ValueError):
    """The whole input is unusable: an HTTP status (400, 413, 415 or 422) and a one-line
    reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------------------- one row
def _one_line(text: str, limit: int = _MAX_REASON) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _coordinate(value: Any, name: str) -> float:
    """Degrees from one cell, via ``app.coords``; ValueError with a one-line reason."""
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, np.generic):  # VOTable cells; coords takes Python numbers and str
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


def _make_row(row: int, ra: Any, dec: Any, ident: Any = None) -> TargetRow:
    """A checked row from raw cells; every problem of the row goes into ``error``."""
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
        return TargetRow(row, id_text, None, None, _one_line(f"row {row}: " + "; ".join(problems)))
    return TargetRow(row, id_text, degrees[0], degrees[1], None)


# ---------------------------------------------------------------------------- columns
def _norm(name: Any) -> str:
    return str(name).strip().lower()


def _pick(names: Sequence[str], wanted: Iterable[str], what: str) -> int | None:
    """Index of the first accepted name present in ``names`` (already normalised)."""
    for alias in wanted:
        hits = [i for i, n in enumerate(names) if n == alias]
        if len(hits) > 1:
            raise TargetsError(422, f"the {what} column {alias!r} appears {len(hits)} times")
        if hits:
            return hits[0]
    return None


def _found(names: Sequence[str]) -> str:
    shown = ", ".join(_one_line(repr(n), 40) for n in names[:20])
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return (shown or "none") + more


def _missing(ra: object, dec: object, names: Sequence[str]) -> TargetsError:
    what = " or ".join(w for w, i in (("ra", ra), ("dec", dec)) if i is None)
    return TargetsError(
        422,
        f"the targets need ra and dec columns; no {what} among the columns found: {_found(names)}",
    )


def _columns(names: Sequence[str]) -> tuple[int, int, int | None]:
    """(ra, dec, id) column indices, or TargetsError naming the columns found."""
    ra, dec = _pick(names, RA_NAMES, "ra"), _pick(names, DEC_NAMES, "dec")
    if ra is None or dec is None:
        raise _missing(ra, dec, names)
    return ra, dec, _pick(names, ID_NAMES, "id")


def _too_many(max_targets: int) -> TargetsError:
    return TargetsError(
        413, f"the job has more than {max_targets} targets (GALMET_MAX_JOB_TARGETS)"
    )


def _no_targets() -> TargetsError:
    return TargetsError(422, "the job has no targets")


# ---------------------------------------------------------------------------- JSON
def parse_json_targets(data: Any, max_targets: int) -> list[TargetRow]:
    """Rows from a decoded JSON body: ``[{"ra": .., "dec": .., "id": ..}, ...]`` or
    ``{"targets": [...]}``. Keys are matched like CSV columns (case-insensitive, aliases)."""
    if isinstance(data, dict) and "targets" in data:
        data = data["targets"]
    if not isinstance(data, list):
        raise TargetsError(
            422,
            'the JSON body must be a list of targets or {"targets": [...]}, e.g. '
            '[{"ra": 150.1, "dec": 2.2, "id": "a"}]',
        )
    if not data:
        raise _no_targets()
    if len(data) > max_targets:
        raise _too_many(max_targets)
    objects = [t for t in data if isinstance(t, dict)]
    if not objects:
        raise TargetsError(422, 'each target must be an object, e.g. {"ra": 150.1, "dec": 2.2}')
    # A key no object has is a missing column (all rows would fail the same way); a key only
    # some objects lack is those rows' problem.
    keys = sorted({_norm(k) for t in objects for k in t})
    ra, dec = (next((k for k in keys if k in aliases), None) for aliases in (RA_NAMES, DEC_NAMES))
    if ra is None or dec is None:
        raise _missing(ra, dec, keys)
    return [_json_row(i, t) for i, t in enumerate(data, start=1)]


def _json_row(row: int, target: Any) -> TargetRow:
    if not isinstance(target, dict):
        return TargetRow(row, None, None, None, f"row {row}: a target must be an object")
    names = [_norm(k) for k in target]
    values = list(target.values())
    try:
        cols = [_pick(names, aliases, what) for aliases, what in _ALIASES]
    except TargetsError as exc:  # {"ra": 1, "RA": 2}: ambiguous for this row only
        return TargetRow(row, None, None, None, _one_line(f"row {row}: {exc.message}"))
    ra, dec, ident = (None if i is None else values[i] for i in cols)
    return _make_row(row, ra, dec, ident)


# ---------------------------------------------------------------------------- CSV
class _Prefixed(io.RawIOBase):
    """``head``, then the rest of ``stream``: replays sniffed bytes of a stream that cannot
    seek, and shields ``stream`` from being closed by the wrappers around it."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _text_lines(text: io.TextIOWrapper) -> Iterator[str]:
    """Lines of the file, less blank lines and '#' comments, each at most MAX_LINE_CHARS."""
    number = 0
    while True:
        try:
            line = text.readline(MAX_LINE_CHARS + 1)
        except UnicodeDecodeError:
            raise TargetsError(400, f"the file is not UTF-8 text (after line {number})") from None
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise TargetsError(422, f"line {number} is longer than {MAX_LINE_CHARS} characters")
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield line


def parse_csv_targets(stream: BinaryIO, max_targets: int) -> Iterator[TargetRow]:
    """Rows of a CSV file (UTF-8, BOM allowed), read line by line as the iterator is consumed.

    The header is read at once, so a file without an ra or dec column raises here; errors
    later in the file (too many rows, bad UTF-8, no data rows) raise from the iterator. The
    delimiter is the header's: a comma, else a tab, else a semicolon.
    """
    # newline="" as the csv module wants (quoted fields may hold newlines); utf-8-sig drops
    # the BOM that Excel writes. The _Prefixed layer keeps the caller's stream open when the
    # wrapper is closed or collected: closing it is the caller's business.
    text = io.TextIOWrapper(
        io.BufferedReader(_Prefixed(b"", stream)), encoding="utf-8-sig", newline=""
    )
    lines = _text_lines(text)
    header_line = next(lines, None)
    if header_line is None:
        raise _no_targets()
    delimiter = next((d for d in (",", "\t", ";") if d in header_line), ",")
    reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True)
    header = next(csv.reader([header_line], delimiter=delimiter, skipinitialspace=True), [])
    return _csv_rows(reader, _columns([_norm(h) for h in header]), max_targets)


def _csv_rows(
    reader: Iterator[list[str]], cols: tuple[int, int, int | None], max_targets: int
) -> Iterator[TargetRow]:
    ra_i, dec_i, id_i = cols
    row = 0
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            raise TargetsError(422, _one_line(f"bad CSV after row {row}: {exc}")) from None
        if fields is None:
            break
        if not any(f.strip() for f in fields):  # ",,," lines that spreadsheets append
            continue
        row += 1
        if row > max_targets:
            raise _too_many(max_targets)  # before reading any further
        yield _make_row(
            row,
            fields[ra_i] if ra_i < len(fields) else None,
            fields[dec_i] if dec_i < len(fields) else None,
            fields[id_i] if id_i is not None and id_i < len(fields) else None,
        )
    if row == 0:
        raise _no_targets()


# ---------------------------------------------------------------------------- VOTable
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
        raise TargetsError(400, _one_line(f"cannot read the VOTable: {exc}")) from None
    try:
        table = votable.get_first_table()
    except IndexError:
        raise TargetsError(422, "the VOTable has no table") from None
    fields = list(table.fields)
    names = [_norm(f.name) for f in fields]
    cols = [_pick(names, aliases, what) for aliases, what in _ALIASES]
    for k, ucd in enumerate(("pos.eq.ra", "pos.eq.dec", "meta.id")):
        if cols[k] is None:
            cols[k] = _votable_field(fields, ucd)
    ra_i, dec_i, id_i = cols
    if ra_i is None or dec_i is None:
        raise _missing(ra_i, dec_i, names)
    array = table.array
    n = len(array)
    if n == 0:
        raise _no_targets()
    if n > max_targets:
        raise _too_many(max_targets)
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
    return [
        _make_row(row, ra, dec, ident)
        for row, (ra, dec, ident) in enumerate(zip(*cells, strict=True), start=1)
    ]


# ---------------------------------------------------------------------------- dispatch
def _sniff(head: bytes) -> str:
    """The kind of a file from its first bytes."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TargetsError(400, "the file is UTF-16 text; save it as UTF-8")
    start = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if start.startswith((b"[", b"{")):
        return "json"
    if start.startswith(b"<"):
        return "votable"
    if start.startswith(b"SIMPLE  ="):
        raise TargetsError(415, "FITS files are not supported: send CSV, JSON or a VOTable")
    if b"\0" in head:
        raise TargetsError(415, "the file is binary, not CSV, JSON or a VOTable")
    return "csv"


def _kind(content_type: str | None, filename: str | None) -> str | None:
    """csv, json or votable from the declared type, else the extension; None: sniff."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in _CSV_TYPES:
        return "csv"
    if ctype in _JSON_TYPES or ctype.endswith("+json"):
        return "json"
    if ctype in _VOTABLE_TYPES or ctype.endswith("+xml"):
        return "votable"
    if ctype not in _VAGUE_TYPES:
        raise TargetsError(
            415, _one_line(f"unsupported target list type {ctype!r}: send CSV, JSON or a VOTable")
        )
    match = re.search(r"\.[A-Za-z0-9]+$", (filename or "").strip())
    return _EXTENSIONS.get(match.group(0).lower()) if match else None


def _peek(stream: BinaryIO) -> tuple[bytes, BinaryIO]:
    """The first bytes of ``stream``, and a stream that still starts at them: the same one
    rewound when it can seek (uploads and BytesIO can), else a wrapper replaying them."""
    if stream.seekable():
        start = stream.tell()
        head = stream.read(_SNIFF_BYTES)
        stream.seek(start)
        return head, stream
    head = stream.read(_SNIFF_BYTES)
    return head, io.BufferedReader(_Prefixed(head, stream))  # type: ignore[return-value]


def target_format(stream: BinaryIO, filename: str | None, content_type: str | None) -> str:
    """``"csv"``, ``"json"`` or ``"votable"``: what ``parse_targets`` will read the input
    as (TargetsError 415 when none). A seekable stream is left where it was; a stream that
    cannot seek is only sniffed when type and extension are both vague, and then it must not
    be parsed afterwards (call ``parse_targets`` directly instead)."""
    kind = _kind(content_type, filename)
    if kind is None:
        kind = _sniff(_peek(stream)[0])
    return kind


def parse_targets(
    stream: BinaryIO, filename: str | None, content_type: str | None, max_targets: int
) -> Iterator[TargetRow] | list[TargetRow]:
    """Rows of a target list of any supported kind, chosen by content type, then file
    extension, then the first bytes. CSV comes back as a lazy iterator (see
    ``parse_csv_targets``), JSON and VOTable as lists."""
    kind = _kind(content_type, filename)
    if kind is None:
        head, stream = _peek(stream)
        kind = _sniff(head)
    if kind == "csv":
        return parse_csv_targets(stream, max_targets)
    if kind == "votable":
        return parse_votable_targets(stream, max_targets)
    try:
        data = json.loads(stream.read().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise TargetsError(400, "the JSON is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TargetsError(400, _one_line(f"invalid JSON: {exc}")) from None
    except RecursionError:
        raise TargetsError(400, "invalid JSON: nested too deeply") from None
    return parse_json_targets(data, max_targets)
