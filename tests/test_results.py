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

from galmet.app.results import (
    DEX_FIELDS,
    MODEL_FIELDS,
    RESULT_COLUMNS,
    results_csv,
    results_json,
)
from galmet.app.results_tables import results_votable
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
    """The row as every format writes it: values in dex to 4 decimals."""
    out = {c: row[c] for c in RESULT_COLUMNS}
    for c in DEX_FIELDS:
        if out[c] is not None:
            out[c] = round(out[c], 4)
    return out


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
    for got, want in zip(back, map(expected, ROWS), strict=True):
        assert int(got["row"]) == want["row"]
        assert (got["id"] or None) == want["id"]
        assert got["status"] == want["status"]
        for c in FLOATS:  # exact: repr round-trips every (rounded) float
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
    model = dict.fromkeys(MODEL_FIELDS)  # no meta given: the model fields are null
    assert back == [expected(r) | model for r in ROWS]
    assert list(back[0]) == [*RESULT_COLUMNS, *MODEL_FIELDS]  # keys in column order


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
    for i, want in enumerate(map(expected, ROWS)):
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
        "from galmet.app.results_tables import results_votable\n"
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


# ---------------------------------------------------------------------------- the user's table
INPUT_COLUMNS = ["name", "ra", "dec", "mag_r", "status"]
TABLE = [
    result(1, "done", id="a", ra=150.25, dec=2.5, oh_p50=8.991208053573576, oh_sigma=0.08,
           oh_p16=8.911208053573576, oh_p84=9.071208053573576, log_mstar=10.123456789,
           separation_arcsec=0.0123456, cached=False,
           input={"name": "a", "ra": "10:01:00", "dec": "+02:30:00", "mag_r": "17.25",
                  "status": "keep"}),
    result(2, "invalid", reason="row 2: ra must be in [0, 360) degrees, got 400",
           input={"name": "b", "ra": "400", "dec": "1.5", "mag_r": "16.5", "status": ""}),
]  # fmt: skip
TABLE_META = {
    "id": "job-1",
    "model_version": "ab12" * 16,
    "tta": 4,
    "notice": "demo, not for science",
}


def _check_table(names: list[str], rows: list[dict[str, Any]]) -> None:
    """The input's columns first, as given; galmet's after, prefixed where names clash."""
    galmet = [f"galmet_{c}" if c in INPUT_COLUMNS else c for c in RESULT_COLUMNS]
    assert names[: len(INPUT_COLUMNS) + len(galmet)] == INPUT_COLUMNS + galmet
    done, invalid = rows
    assert (done["name"], done["ra"], done["dec"]) == ("a", "10:01:00", "+02:30:00")
    assert float(done["mag_r"]) == 17.25 and done["status"] == "keep"
    assert float(done["galmet_ra"]) == 150.25 and done["galmet_status"] == "done"
    # the invalid row keeps every input value beside the reason
    assert (invalid["name"], invalid["ra"], float(invalid["dec"])) == ("b", "400", 1.5)
    assert float(invalid["mag_r"]) == 16.5
    assert invalid["galmet_status"] == "invalid" and "got 400" in invalid["reason"]
    # values in dex to 4 decimals, separations to a milliarcsecond, RA/Dec exact
    assert float(done["oh_p50"]) == 8.9912 and float(done["oh_p16"]) == 8.9112
    assert float(done["oh_p84"]) == 9.0712 and float(done["oh_sigma"]) == 0.08
    assert float(done["log_mstar"]) == 10.1235
    assert float(done["separation_arcsec"]) == 0.012


def test_csv_gives_the_users_table_back_with_the_model_named() -> None:
    text = "".join(results_csv(TABLE, TABLE_META, INPUT_COLUMNS))
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments == [
        "# job: job-1",
        f"# model_version: {'ab12' * 16}",
        "# tta: 4",
        "# notice: demo, not for science",
    ]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    reader = csv.DictReader(io.StringIO(body))
    _check_table(list(reader.fieldnames or ()), list(reader))
    # written as 8.9912, not 8.991208053573576
    assert ",8.9912," in text and "8.991208" not in text
    # astropy reads it, told that '#' starts a comment line
    table = Table.read(text, format="ascii.csv", comment="#")
    assert list(table.colnames[:5]) == INPUT_COLUMNS and table["oh_p50"][0] == 8.9912


def test_json_gives_the_users_table_back_with_the_model_named() -> None:
    back = json.loads("".join(results_json(TABLE, TABLE_META, INPUT_COLUMNS)))
    _check_table(list(back[0]), back)
    for row in back:
        assert row["model_version"] == "ab12" * 16 and row["tta"] == 4
        assert row["notice"] == "demo, not for science"
    assert back[0]["oh_p50"] == 8.9912


def test_votable_gives_the_users_table_back_with_the_model_named() -> None:
    data = results_votable(TABLE, TABLE_META, INPUT_COLUMNS)
    votable = parse(io.BytesIO(data), verify="exception")
    vtable = votable.get_first_table()
    table = vtable.to_table()
    rows = [{c: table[c][i] for c in table.colnames} for i in range(len(table))]
    _check_table(list(table.colnames), rows)
    assert table["mag_r"].dtype.kind == "f"  # a CSV's numbers are numbers in a VOTable
    assert table["ra"].dtype.kind in "OU"  # sexagesimal text stays text
    params = {p.name: p.value for p in vtable.params}
    assert params["model_version"] == "ab12" * 16 and int(params["tta"]) == 4
    assert params["notice"] == "demo, not for science"
    infos = {i.name: i.value for i in votable.resources[0].infos}
    assert infos["notice"] == "demo, not for science" and infos["tta"] == "4"
    # 4 decimals as written, not only as read back
    assert b"<TD>8.9912</TD>" in data and b"8.991208" not in data


def test_a_json_inputs_types_come_back() -> None:
    row = result(1, "done", ra=1.0, dec=2.0, input={"ra": 1, "dec": 2.0, "z": 0.1, "ok": True,
                                                     "tags": ["a", "b"]})  # fmt: skip
    columns = ["ra", "dec", "z", "ok", "tags"]
    (back,) = json.loads("".join(results_json([row], None, columns)))
    assert (back["ra"], back["z"], back["ok"], back["tags"]) == (1, 0.1, True, ["a", "b"])
    line = list(results_csv([row], None, columns))[1]
    assert line.startswith('1,2.0,0.1,true,"[""a"", ""b""]",')
    table = Table.read(io.BytesIO(results_votable([row], {}, columns)), format="votable")
    assert table["ra"].dtype.kind == "i" and table["ok"].dtype.kind == "b"
    assert table["tags"][0] == '["a", "b"]'


def test_votable_ids_stay_unique_whatever_the_users_columns() -> None:
    import re

    row = result(1, "done", ra=1.0, dec=2.0, input={"job_id": "x", "param_tta": 3})
    data = results_votable([row], TABLE_META, ["job_id", "param_tta"])
    ids = re.findall(rb' ID="([^"]+)"', data)
    assert len(ids) == len(set(ids)) and b"job_id" in ids and b"param_tta" in ids
    votable = parse(io.BytesIO(data), verify="exception")
    assert {i.name: i.value for i in votable.resources[0].infos}["id"] == "job-1"
    assert {p.name: p.value for p in votable.get_first_table().params}["tta"] == 4
