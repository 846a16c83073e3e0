"""FITS in and out: job results as a binary table that astropy (and so TOPCAT) reads with
units, UCDs and descriptions, and FITS tables accepted as job input like CSV and VOTable."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from galmet.app.results import RESULT_COLUMNS
from galmet.app.results_tables import results_fits
from galmet.app.targets import TargetRow, TargetsError, parse_fits_targets, parse_targets
from galmet.app.targets.dispatch import target_format
from tests.test_results import (
    FLOATS,
    INPUT_COLUMNS,
    ROWS,
    TABLE,
    TABLE_META,
    _check_table,
    expected,
)

CAP = 1000
#: "dex" is no FITS-standard unit: astropy reads it back as an unrecognised one, and says so.
pytestmark = pytest.mark.filterwarnings("ignore:'dex' did not parse as fits unit")


def fits_bytes(table: Table, ucds: dict[str, str] | None = None) -> bytes:
    """``table`` as a FITS file (an empty primary HDU, then the table), with TUCDn cards."""
    hdu = fits.table_to_hdu(table)
    for k, name in enumerate(table.colnames, start=1):
        if ucds and name in ucds:
            hdu.header[f"TUCD{k}"] = ucds[name]
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    return out.getvalue()


def read(data: bytes) -> tuple[Table, fits.Header]:
    hdus = fits.open(io.BytesIO(data))
    return Table.read(hdus, hdu=1), hdus[1].header


# ---------------------------------------------------------------------------- results out
def test_fits_results_read_back_with_every_row_units_and_nulls() -> None:
    table, header = read(results_fits(ROWS, {"id": "job-9", "tta": 8, "status": "done"}))
    assert table.colnames == list(RESULT_COLUMNS)
    assert len(table) == len(ROWS)
    for i, want in enumerate(map(expected, ROWS)):
        assert table["row"][i] == want["row"] and table["status"][i] == want["status"]
        for c in FLOATS:  # a null float is NaN (masked on reading); the rest exact
            got = table[c][i]
            assert (None if np.ma.is_masked(got) or math.isnan(got) else got) == want[c], c
        assert (table["flags"][i] or "").split(";") == (want["flags"] or [""])
    assert bool(table["cached"][0]) and not bool(table["cached"][1])
    assert table["objID"].mask.all()  # null integers are TNULL, read back masked
    assert table["ra"].unit == u.deg and table["separation_arcsec"].unit == u.arcsec
    assert header["EXTNAME"] == "GALMET"
    assert (header["JOBID"], header["TTA"], header["JOBSTAT"]) == ("job-9", 8, "done")
    k = RESULT_COLUMNS.index("oh_p50") + 1
    assert header[f"TTYPE{k}"] == "oh_p50" and header[f"TUNIT{k}"] == "dex"
    assert header[f"TUCD{k}"] == "phys.abund.Z"
    assert header[f"TCOMM{k}"] == "gas-phase metallicity 12 + log10(O/H), median"
    # text is UTF-8: a non-ASCII id comes back as written
    assert table["id"][1] == 'odd, "quoted"\nid é'


def test_fits_gives_the_users_table_back_with_the_model_named() -> None:
    table, header = read(results_fits(TABLE, TABLE_META, INPUT_COLUMNS))
    rows = [{c: table[c][i] for c in table.colnames} for i in range(len(table))]
    _check_table(list(table.colnames), rows)
    assert table["mag_r"].dtype.kind == "f" and table["ra"].dtype.kind in "OUS"
    assert header["MODELVER"] == "ab12" * 16 and header["TTA"] == 4
    assert header["NOTICE"] == "demo, not for science"
    assert header["TCOMM1"] == "from the submitted target list, as given"


def test_fits_results_keep_columns_whose_names_fits_cannot_hold() -> None:
    row = dict(TABLE[0], input={"naïve\x1f": 1.5, "x" * 80: "a", "naïve?": 2.5, "o'k": 3})
    data = results_fits([row], {}, list(row["input"]))
    table, header = read(data)
    assert table.colnames[:4] == ["na_ve_", "x" * 60, "na_ve?", "o_k"]
    assert [table[c][0] for c in table.colnames[:4]] == [1.5, "a", 2.5, 3]
    assert header["TCOMM1"] == "from the submitted target list, as given (column 'na\\xefve\\x1f')"


def test_fits_results_of_no_rows_still_name_the_columns() -> None:
    table, _ = read(results_fits([], {"id": "x"}))
    assert len(table) == 0 and table.colnames == list(RESULT_COLUMNS)


def test_fits_results_read_back_as_a_job_input() -> None:
    rows = parse_fits_targets(io.BytesIO(results_fits(ROWS, {})), CAP)
    assert [(r.ra, r.dec) for r in rows[:2]] == [(150.12345678901234, -2.2), (10.0, 0.0)]
    assert rows[2].error == "row 3: ra is missing; dec is missing"


# ---------------------------------------------------------------------------- targets in
def test_fits_targets_by_name_with_nulls_and_every_cell_kept() -> None:
    table = Table()
    table["NAME"] = ["a", "b", "", "d"]
    table["RA"] = MaskedColumn([150.1, 400.0, 0.0, 10.0], unit="deg", mask=[0, 0, 1, 0])
    table["DEC"] = np.array([2.2, 1.0, 1.0, np.nan])
    table["flux"] = np.array([1, 2, 3, 4], dtype=np.int32)
    rows = parse_fits_targets(io.BytesIO(fits_bytes(table)), CAP)
    assert rows[0] == TargetRow(1, "a", 150.1, 2.2, None)
    assert rows[1].error == "row 2: ra must be in [0, 360) degrees, got 400"
    assert rows[2].error == "row 3: ra is missing" and rows[2].id is None
    assert rows[3].error == "row 4: dec is missing"  # NaN is a null
    assert rows[0].cells == {"NAME": "a", "RA": 150.1, "DEC": 2.2, "flux": 1}


def test_fits_targets_by_ucd_in_other_angle_units() -> None:
    table = Table()
    table["alpha"] = [np.radians(150.0), np.radians(10.0)] * u.rad
    table["delta"] = [2.2 * 3600, -5.0 * 3600] * u.arcsec
    table["n"] = np.array([7, 8], dtype=np.int64)
    ucds = {"alpha": "pos.eq.ra;meta.main", "delta": "pos.eq.dec", "n": "meta.id"}
    rows = parse_fits_targets(io.BytesIO(fits_bytes(table, ucds)), CAP)
    assert [r.id for r in rows] == ["7", "8"]
    assert [r.ra for r in rows] == pytest.approx([150.0, 10.0])
    assert [r.dec for r in rows] == pytest.approx([2.2, -5.0])


def test_fits_targets_in_the_first_table_after_an_image() -> None:
    table = Table({"ra": [150.1], "dec": [2.2], "id": ["a"]})
    out = io.BytesIO()
    image = fits.ImageHDU(np.zeros((4, 4), dtype=np.float32))
    fits.HDUList([fits.PrimaryHDU(), image, fits.table_to_hdu(table)]).writeto(out)
    assert parse_fits_targets(io.BytesIO(out.getvalue()), CAP) == [
        TargetRow(1, "a", 150.1, 2.2, None)
    ]


def _error(status: int, data: bytes, cap: int = CAP) -> str:
    with pytest.raises(TargetsError) as info:
        parse_fits_targets(io.BytesIO(data), cap)
    assert info.value.status == status, info.value.message
    return info.value.message


def test_fits_whole_input_errors() -> None:
    good = fits_bytes(Table({"ra": [1.0, 2.0, 3.0], "dec": [1.0, 2.0, 3.0]}))
    assert "cannot read the FITS file" in _error(400, good[:2000])
    assert "cannot read the FITS file" in _error(400, b"SIMPLE  = garbage")
    image = io.BytesIO()
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(image)
    assert _error(422, image.getvalue()) == ("the FITS file has no table (images are not targets)")
    assert _error(422, fits_bytes(Table({"ra": np.zeros(0), "dec": np.zeros(0)}))) == (
        "the job has no targets"
    )
    assert "more than 2 targets" in _error(413, good, 2)
    assert "not an angle" in _error(422, fits_bytes(Table({"ra": [1.0] * u.mag, "dec": [1.0]})))
    assert "no ra among the columns found: 'x', 'dec'" in _error(
        422, fits_bytes(Table({"x": [1.0], "dec": [1.0]}))
    )


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [("t.fits", None), ("t.FIT", "application/octet-stream"), (None, "application/fits"),
     (None, None)],
)  # fmt: skip
def test_fits_is_chosen_by_type_extension_or_first_bytes(filename, content_type) -> None:
    data = fits_bytes(Table({"id": ["a"], "ra": [150.1], "dec": [2.2]}))
    stream = io.BytesIO(data)
    assert target_format(stream, filename, content_type) == "fits"
    assert list(parse_targets(stream, filename, content_type, CAP)) == [
        TargetRow(1, "a", 150.1, 2.2, None)
    ]
