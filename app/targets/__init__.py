"""A batch job's target list: CSV, JSON, VOTable or FITS in, one checked ``TargetRow`` per row out.

Every data row becomes a ``TargetRow``, numbered from 1 in input order (header, comments and
blank lines not counted). A row whose coordinates do not parse keeps its place with ``error``
set, so that the results can report it while the good rows are predicted. Coordinates are
checked by the service's own parser (``galmet.sky``), so a batch accepts exactly what a single
prediction accepts. Problems with the whole input raise ``TargetsError`` (a 4xx and a
one-line reason): no targets, no ra/dec column, too many targets, unreadable or unsupported
files. CSV is streamed: the cap on targets is enforced as rows are read, before the rest of
an oversized file is.
"""

from galmet.app.targets.csv_file import MAX_LINE_CHARS, parse_csv_targets
from galmet.app.targets.dispatch import parse_targets, target_format
from galmet.app.targets.fits_file import parse_fits_targets
from galmet.app.targets.json_list import parse_json_targets
from galmet.app.targets.rows import (
    DEC_NAMES,
    ID_NAMES,
    MAX_ID_LENGTH,
    RA_NAMES,
    TargetRow,
    TargetsError,
)
from galmet.app.targets.votable import parse_votable_targets

__all__ = [
    "DEC_NAMES",
    "ID_NAMES",
    "MAX_ID_LENGTH",
    "MAX_LINE_CHARS",
    "RA_NAMES",
    "TargetRow",
    "TargetsError",
    "parse_csv_targets",
    "parse_fits_targets",
    "parse_json_targets",
    "parse_targets",
    "parse_votable_targets",
    "target_format",
]
