"""CSV target lists, streamed: rows are read and checked as the caller iterates, so the cap
on targets stops an oversized file before the rest of it is read."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from galmet.app.targets.rows import (
    TargetRow,
    TargetsError,
    find_columns,
    make_row,
    no_targets,
    norm_name,
    one_line_reason,
    too_many,
    unique_names,
)

#: No target line is anywhere near this long; the cap stops one enormous "line" (a file
#: without newlines) from being read into memory whole.
MAX_LINE_CHARS = 65_536


class Prefixed(io.RawIOBase):
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
    # the BOM that Excel writes. The Prefixed layer keeps the caller's stream open when the
    # wrapper is closed or collected: closing it is the caller's business.
    text = io.TextIOWrapper(
        io.BufferedReader(Prefixed(b"", stream)), encoding="utf-8-sig", newline=""
    )
    lines = _text_lines(text)
    header_line = next(lines, None)
    if header_line is None:
        raise no_targets()
    delimiter = next((d for d in (",", "\t", ";") if d in header_line), ",")
    reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True)
    header = next(csv.reader([header_line], delimiter=delimiter, skipinitialspace=True), [])
    cols = find_columns([norm_name(h) for h in header])
    return _csv_rows(reader, cols, unique_names(header), max_targets)


def _cells(names: list[str], fields: list[str]) -> dict[str, str | None]:
    """The row by column name; a missing cell is None, a cell past the header's columns is
    kept under its position's name (``col7``)."""
    cells: dict[str, str | None] = dict.fromkeys(names)
    for i, value in enumerate(fields):
        cells[names[i] if i < len(names) else f"col{i + 1}"] = value
    return cells


def _csv_rows(
    reader: Iterator[list[str]],
    cols: tuple[int, int, int | None],
    names: list[str],
    max_targets: int,
) -> Iterator[TargetRow]:
    ra_i, dec_i, id_i = cols
    row = 0
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            raise TargetsError(422, one_line_reason(f"bad CSV after row {row}: {exc}")) from None
        if fields is None:
            break
        if not any(f.strip() for f in fields):  # ",,," lines that spreadsheets append
            continue
        row += 1
        if row > max_targets:
            raise too_many(max_targets)  # before reading any further
        yield make_row(
            row,
            fields[ra_i] if ra_i < len(fields) else None,
            fields[dec_i] if dec_i < len(fields) else None,
            fields[id_i] if id_i is not None and id_i < len(fields) else None,
            _cells(names, fields),
        )
    if row == 0:
        raise no_targets()
