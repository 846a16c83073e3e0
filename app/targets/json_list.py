"""JSON target lists: ``[{"ra": .., "dec": .., "id": ..}, ...]`` or ``{"targets": [...]}``."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from galmet.app.targets.rows import (
    ALIASES,
    DEC_NAMES,
    RA_NAMES,
    TargetRow,
    TargetsError,
    json_cell,
    make_row,
    missing_columns,
    no_targets,
    norm_name,
    one_line_reason,
    pick_column,
    too_many,
)


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
        raise no_targets()
    if len(data) > max_targets:
        raise too_many(max_targets)
    objects = [t for t in data if isinstance(t, dict)]
    if not objects:
        raise TargetsError(422, 'each target must be an object, e.g. {"ra": 150.1, "dec": 2.2}')
    # A key no object has is a missing column (all rows would fail the same way); a key only
    # some objects lack is those rows' problem.
    keys = sorted({norm_name(k) for t in objects for k in t})
    ra, dec = (next((k for k in keys if k in aliases), None) for aliases in (RA_NAMES, DEC_NAMES))
    if ra is None or dec is None:
        raise missing_columns(ra, dec, keys)
    return [_json_row(i, t) for i, t in enumerate(data, start=1)]


def _json_row(row: int, target: Any) -> TargetRow:
    if not isinstance(target, dict):
        reason = f"row {row}: a target must be an object"
        return TargetRow(row, None, None, None, reason, {"value": json_cell(target)})
    cells = json_cell(target)
    names = [norm_name(k) for k in target]
    values = list(target.values())
    try:
        cols = [pick_column(names, aliases, what) for aliases, what in ALIASES]
    except TargetsError as exc:  # {"ra": 1, "RA": 2}: ambiguous for this row only
        reason = one_line_reason(f"row {row}: {exc.message}")
        return TargetRow(row, None, None, None, reason, cells)
    ra, dec, ident = (None if i is None else values[i] for i in cols)
    return make_row(row, ra, dec, ident, cells)


def read_json_targets(stream: BinaryIO, max_targets: int) -> list[TargetRow]:
    """Rows of a JSON file (UTF-8, BOM allowed); TargetsError 400 when it does not decode."""
    try:
        data = json.loads(stream.read().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise TargetsError(400, "the JSON is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TargetsError(400, one_line_reason(f"invalid JSON: {exc}")) from None
    except RecursionError:
        raise TargetsError(400, "invalid JSON: nested too deeply") from None
    return parse_json_targets(data, max_targets)
