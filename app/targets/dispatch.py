"""Which reader a target list needs: declared content type, then file extension, then the
first bytes; and ``parse_targets``, which picks it."""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator
from typing import BinaryIO

from galmet.app.targets.csv_file import Prefixed, parse_csv_targets
from galmet.app.targets.fits_file import parse_fits_targets
from galmet.app.targets.json_list import read_json_targets
from galmet.app.targets.rows import TargetRow, TargetsError, one_line_reason
from galmet.app.targets.votable import parse_votable_targets

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
_FITS_TYPES = {"application/fits", "image/fits", "application/x-fits"}
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
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
}
_SNIFF_BYTES = 4096


def _sniff(head: bytes) -> str:
    """The kind of a file from its first bytes."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TargetsError(400, "the file is UTF-16 text; save it as UTF-8")
    start = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if start.startswith((b"[", b"{")):
        return "json"
    if start.startswith(b"<"):
        return "votable"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if b"\0" in head:
        raise TargetsError(415, "the file is binary, not CSV, JSON, a VOTable or FITS")
    return "csv"


def _kind(content_type: str | None, filename: str | None) -> str | None:
    """csv, json, votable or fits from the declared type, else the extension; None: sniff."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in _CSV_TYPES:
        return "csv"
    if ctype in _JSON_TYPES or ctype.endswith("+json"):
        return "json"
    if ctype in _VOTABLE_TYPES or ctype.endswith("+xml"):
        return "votable"
    if ctype in _FITS_TYPES:
        return "fits"
    if ctype not in _VAGUE_TYPES:
        raise TargetsError(
            415,
            one_line_reason(
                f"unsupported target list type {ctype!r}: send CSV, JSON, a VOTable or FITS"
            ),
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
    return head, io.BufferedReader(Prefixed(head, stream))  # type: ignore[return-value]


def target_format(stream: BinaryIO, filename: str | None, content_type: str | None) -> str:
    """``"csv"``, ``"json"``, ``"votable"`` or ``"fits"``: what ``parse_targets`` will read
    the input as (TargetsError 415 when none). A seekable stream is left where it was; a stream that
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
    ``parse_csv_targets``), JSON, VOTable and FITS as lists."""
    kind = _kind(content_type, filename)
    if kind is None:
        head, stream = _peek(stream)
        kind = _sniff(head)
    if kind == "csv":
        return parse_csv_targets(stream, max_targets)
    if kind == "votable":
        return parse_votable_targets(stream, max_targets)
    if kind == "fits":
        return parse_fits_targets(stream, max_targets)
    return read_json_targets(stream, max_targets)
