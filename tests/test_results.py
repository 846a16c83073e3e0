"""Batch job results (``app.results``) in JSON, CSV and VOTable, read back by other tools."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import numpy as np
import pytest
from astropy.io.votable import parse
from astropy.table import Table

from galmet.app.results import RESULT_COLUMNS, results_csv, results_json, results_votable
from galmet.app.targets import parse_votable_targets

FLOATS = [
    "ra",
    "dec",
    "oh_p50",
    "oh_sigma",
    "oh_p16",
    "oh_p84",
    "log_mstar",
    "log_mstar_sigma",
    "oh_tta_spread",
    "ood_score",
]


def result(row: int, status: str, **values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {c: None for c in RESULT_COLUMNS}
    out.update(row=row, status=status, flags=[])
    out.update(values)
    return out


ROWS = [
    result(
        1,
        "done",
        id="1237648720693755918",
        ra=150.12345678901234,
        dec=-2.2,
        oh_p50=8.979999542236328,  # a float32 value: written exactly, not rounded
        oh_sigma=0.08,
        oh_p16=8.9,
        oh_p84=9.06,
        log_mstar=10.5,
        log_mstar_sigma=0.2,
        oh_tta_spread=0.012,
        ood_score=0.962,
        cached=True,
        flags=["grayscale_converted", "resized"],
    ),
    result(
        2,
        "failed",
        id='odd, "quoted"\nid é',
        ra=10.0,
        dec=0.0,
        cached=False,
        reason="SkyServer answered 502 after 3 tries",
    ),
    result(3, "invalid", reason="row 3: ra must be in [0, 360) degrees, got 400"),
    result(4, "queued", id="dup", ra=359.9, dec=90.0),
    result(
        5,
        "done",
        id="dup",
        ra=1.0,
        dec=1.0,
        oh_p50=8.5,
        oh_sigma=0.1,
        oh_p16=8.4,
        oh_p84=8.6,
        oh_tta_spread=0.0,
        cached=False,
    ),
]


def expected(row: dict[str, Any]) -> dict[str, Any]:
    return {c: row[c] for c in RESULT_COLUMNS}


def test_result_columns() -> None:
    assert RESULT_COLUMNS[:5] == ("row", "id", "ra", "dec", "status")
    assert set(RESULT_COLUMNS) == set(ROWS[0])


# ---------------------------------------------------------------------------- CSV
def test_csv_reads_back_with_every_row() -> None:
    chunks = list(results_csv(iter(ROWS)))  # an iterator is enough: rows are streamed
    assert len(chunks) == 1 + len(ROWS)  # header, then one line per row
    reader = csv.DictReader(io.StringIO("".join(chunks), newline=""))
    assert tuple(reader.fieldnames or ()) == RESULT_COLUMNS
    back = list(reader)
    assert len(back) == len(ROWS)
    for got, want in zip(back, ROWS, strict=True):
        assert int(got["row"]) == want["row"]
        assert (got["id"] or None) == want["id"]
        assert got["status"] == want["status"]
        for c in FLOATS:  # exact: repr round-trips every float
            assert (float(got[c]) if got[c] else None) == want[c], c
        assert {"": None, "true": True, "false": False}[got["cached"]] == want["cached"]
        assert (got["flags"].split(";") if got["flags"] else []) == want["flags"]
        assert (got["reason"] or None) == want["reason"]


def test_csv_of_no_rows_is_the_header() -> None:
    assert list(results_csv([])) == [",".join(RESULT_COLUMNS) + "\r\n"]


# ---------------------------------------------------------------------------- JSON
def test_json_reads_back_with_every_row() -> None:
    chunks = list(results_json(iter(ROWS)))
    assert len(chunks) == len(ROWS) + 1  # streamed: one chunk per row and the closing one
    back = json.loads("".join(chunks))
    assert back == [expected(r) for r in ROWS]
    assert list(back[0]) == list(RESULT_COLUMNS)  # keys in column order


def test_json_of_no_rows() -> None:
    assert json.loads("".join(results_json([]))) == []


def test_non_finite_numbers_become_null() -> None:
    row = result(1, "done", ra=1.0, dec=2.0, oh_p50=math.nan, oh_sigma=np.float32(math.inf))
    (back,) = json.loads("".join(results_json([row])))  # strict JSON: no NaN allowed
    assert back["oh_p50"] is None and back["oh_sigma"] is None
    line = list(results_csv([row]))[1]
    assert "nan" not in line.lower() and "inf" not in line.lower()


def test_numpy_values_are_written_as_numbers() -> None:
    row = result(1, "done", ra=np.float64(1.5), dec=np.float32(0.5), oh_p50=np.float32(8.75))
    (back,) = json.loads("".join(results_json([row])))
    assert (back["ra"], back["dec"], back["oh_p50"]) == (1.5, 0.5, 8.75)


def test_a_row_missing_a_key_is_an_error() -> None:
    row = result(1, "done")
    del row["oh_tta_spread"]
    with pytest.raises(KeyError, match="oh_tta_spread"):
        list(results_json([row]))


# ---------------------------------------------------------------------------- VOTable
META = {"id": "0b7e6a1c-1d4e-4a59-9d51-0a2f6f1c9e11", "model_version": "1294", "tta": 8}


def test_votable_reads_back_with_every_row_masked_where_none() -> None:
    data = results_votable(iter(ROWS), META)
    votable = parse(io.BytesIO(data), verify="exception")  # valid VOTable, no warnings
    table = votable.get_first_table().to_table()
    assert tuple(table.colnames) == RESULT_COLUMNS
    assert len(table) == len(ROWS)
    for i, want in enumerate(ROWS):
        assert table["row"][i] == want["row"]
        assert table["status"][i] == want["status"]
        # VOTable has no null character cell: None reads back as ""
        assert (table["id"][i] or None) == want["id"]
        assert (table["reason"][i] or None) == want["reason"]
        assert table["flags"][i] == ";".join(want["flags"])
        for c in [*FLOATS, "cached"]:
            masked = bool(np.ma.getmaskarray(table[c])[i])
            assert masked == (want[c] is None), (i, c)
            if not masked:
                assert table[c][i] == want[c], (i, c)
    assert str(table["ra"].unit) == "deg" and str(table["oh_p50"].unit) == "dex"
    fields = {f.name: f for f in votable.get_first_table().fields}
    assert fields["ra"].ucd == "pos.eq.ra;meta.main"
    assert fields["cached"].datatype == "boolean"
    assert all(f.description for f in fields.values())
    infos = {i.name: i.value for i in votable.resources[0].infos}
    assert infos == {"id": META["id"], "model_version": "1294", "tta": "8"}


def test_votable_reads_with_table_read_and_of_no_rows() -> None:
    table = Table.read(io.BytesIO(results_votable([], {"id": "x"})), format="votable")
    assert tuple(table.colnames) == RESULT_COLUMNS and len(table) == 0


def test_votable_results_can_be_submitted_again_as_targets() -> None:
    rows = parse_votable_targets(io.BytesIO(results_votable(ROWS, META)), 100)
    assert [(r.row, r.ra, r.dec) for r in rows if r.error is None] == [
        (1, 150.12345678901234, -2.2),
        (2, 10.0, 0.0),
        (4, 359.9, 90.0),
        (5, 1.0, 1.0),
    ]
    assert rows[2].error == "row 3: ra is missing; dec is missing"
    assert rows[1].id == ROWS[1]["id"]


def test_votable_writing_does_not_corrupt_memory():
    """A row that made astropy's C TABLEDATA writer overflow its buffer by one byte (astropy
    issue #20419): under Python's debug allocator the overflow aborts the process."""
    import subprocess
    import sys

    row = {
        "row": 6, "id": "g4", "ra": 200.65041093997158, "dec": 26.36723619324131,
        "status": "done", "objID": 1237645876944405820, "type": 3,
        "separation_arcsec": 0.0030735851265057375, "oh_p50": 9.002483815327286,
        "oh_sigma": 0.10000007152557373, "oh_p16": 8.902483743801712,
        "oh_p84": 9.10248388685286, "log_mstar": 10.046652026474476,
        "log_mstar_sigma": 0.5000000596046448, "oh_tta_spread": 0.00012120101600885392,
        "ood_score": None, "cached": False, "flags": [], "reason": None,
    }  # fmt: skip
    code = (
        "from galmet.app.results import results_votable\n"
        f"row = {row!r}\n"
        "for _ in range(3):\n"
        "    assert b'1237645876944405820' in results_votable([row], {'id': 'x'})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "PYTHONMALLOC": "debug"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-1500:]
