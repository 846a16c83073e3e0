"""A batch job over HTTP gives the user's own table back: every input column in order,
galmet's columns after them, the model named in every format, 4 decimals in dex, and empty
sky reported as ``422: no galaxy``. Real service, the mock SkyServer, SQLite."""

from __future__ import annotations

import csv
import io
import json

import httpx
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.io.votable import parse
from astropy.table import Table

from galmet.app.demo import DEMO_NOTICE
from galmet.model import file_sha256
from galmet.skyserver import parse_sql_csv
from tests.helpers import galaxy, service
from tests.test_jobs import submit, wait

API = "/api/v1"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def a_star(mock_skyserver: str) -> tuple[float, float]:
    """A bright catalogued field star of the mock sky (PhotoObj.type 6)."""
    query = "SELECT TOP 1 objID, ra, dec FROM Star WHERE petroMag_r < 17 ORDER BY petroMag_r"
    text = httpx.get(
        f"{mock_skyserver}/SkyServerWS/SearchTools/SqlSearch",
        params={"cmd": query, "format": "csv"},
    ).text
    star = parse_sql_csv(text)[0]
    return float(star["ra"]), float(star["dec"])


def users_table(mock_sky, mock_skyserver) -> str:
    """name, ra (sexagesimal for one), dec, mag_r, status: a galaxy, an invalid row whose ra
    is fine, empty sky, a star."""
    g_ra, g_dec = galaxy(mock_sky, 3)
    s_ra, s_dec = a_star(mock_skyserver)
    rows = [
        ("ngc1", repr(g_ra), repr(g_dec), "17.25", "keep"),
        ("typo", repr(g_ra), "north", "16.50", ""),
        ("empty", repr(g_ra), repr(g_dec - 40 / 3600), "", "sky"),
        ("star", repr(s_ra), repr(s_dec), "15.00", "star"),
    ]
    return "name,ra,dec,mag_r,status\n" + "".join(",".join(r) + "\n" for r in rows)


@SQLITE
def test_a_job_gives_the_users_table_back_honestly(
    demo_model, mock_sky, mock_skyserver, database_url, tmp_path
):
    text = users_table(mock_sky, mock_skyserver)
    version = file_sha256(demo_model)
    with service(demo_model, mock_skyserver, database_url, tmp_path) as api:
        r = submit(api, text)
        assert r.status_code == 202, r.text
        status = wait(api, r.json()["id"])
        assert status["notice"] == DEMO_NOTICE
        assert status["input_columns"] == ["name", "ra", "dec", "mag_r", "status"]
        base = f"{api}{API}/jobs/{status['id']}/results"
        as_json = httpx.get(base).json()
        as_csv = httpx.get(base, params={"format": "csv"}).text
        as_vot = httpx.get(base, params={"format": "votable"}).content
        as_fits = httpx.get(base, params={"format": "fits"})
        # The same targets as a FITS table (numbers as numbers, NaN for the typo's dec).
        g_ra, g_dec = galaxy(mock_sky, 3)
        targets = Table({"name": ["ngc1", "typo"], "RA": [g_ra, g_ra], "DEC": [g_dec, np.nan]})
        buffer = io.BytesIO()
        targets.write(buffer, format="fits")
        r = httpx.post(
            f"{api}{API}/jobs",
            files={"file": ("targets.fits", buffer.getvalue(), "application/octet-stream")},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        fits_job = wait(api, r.json()["id"])
        from_fits = httpx.get(f"{api}{API}/jobs/{fits_job['id']}/results").json()

    # CSV: the model named in header lines, then the user's table.
    header = [line for line in as_csv.splitlines() if line.startswith("#")]
    assert header == [
        f"# job: {status['id']}",
        f"# model_version: {version}",
        "# tta: 2",
        f"# notice: {DEMO_NOTICE}",
    ]
    reader = csv.DictReader(line for line in io.StringIO(as_csv) if not line.startswith("#"))
    galmet = ["row", "id", "galmet_ra", "galmet_dec", "galmet_status", "objID"]
    assert list(reader.fieldnames or [])[:11] == ["name", "ra", "dec", "mag_r", "status", *galmet]
    rows_csv = list(reader)
    # VOTable: the same table; the model as PARAMs and INFOs.
    votable = parse(io.BytesIO(as_vot), verify="exception")
    vtable = votable.get_first_table()
    params = {p.name: p.value for p in vtable.params}
    assert params["model_version"] == version and int(params["tta"]) == 2
    assert params["notice"] == DEMO_NOTICE
    infos = {i.name: i.value for i in votable.resources[0].infos}
    assert infos["notice"] == DEMO_NOTICE and infos["model_version"] == version
    table = vtable.to_table()
    assert list(table.colnames[:5]) == ["name", "ra", "dec", "mag_r", "status"]
    assert table["mag_r"].dtype.kind == "f"

    # FITS: the same table, the model as header keywords, units on galmet's columns.
    assert as_fits.headers["content-type"] == "application/fits"
    assert as_fits.headers["content-disposition"].endswith(f'{status["id"]}.fits"')
    hdus = fits.open(io.BytesIO(as_fits.content))
    header, fits_table = hdus[1].header, Table.read(hdus, hdu=1)
    assert (header["MODELVER"], header["TTA"], header["NOTICE"]) == (version, 2, DEMO_NOTICE)
    assert list(fits_table.colnames) == list(table.colnames)
    assert fits_table["galmet_ra"].unit == u.deg
    for name in ("oh_p50", "oh_sigma", "galmet_ra"):
        assert fits_table[name][0] == table[name][0], name
    assert list(fits_table["name"]) == list(table["name"])

    # A FITS target list runs like the CSV: the galaxy's prediction is the cached one, the
    # row without a dec is invalid, the user's columns come back.
    assert [row["name"] for row in from_fits] == ["ngc1", "typo"]
    assert from_fits[0]["oh_p50"] == as_json[0]["oh_p50"] and from_fits[0]["cached"]
    assert from_fits[1]["status"] == "invalid" and "dec is missing" in from_fits[1]["reason"]

    # JSON: the model in every row.
    for row in as_json:
        assert (row["model_version"], row["tta"], row["notice"]) == (version, 2, DEMO_NOTICE)

    galaxy_, typo, empty, star = as_json
    # Every input column, as given, in every format; an invalid row keeps its valid ra.
    for i, (name, mag) in enumerate([("ngc1", "17.25"), ("typo", "16.50"), ("empty", "")]):
        assert as_json[i]["name"] == rows_csv[i]["name"] == table["name"][i] == name
        assert as_json[i]["mag_r"] == rows_csv[i]["mag_r"] == mag
    assert typo["ra"] == rows_csv[1]["ra"] == repr(galaxy(mock_sky, 3)[0])
    assert typo["dec"] == "north" and typo["galmet_status"] == "invalid"
    assert "dec" in typo["reason"] and typo["galmet_ra"] is None
    assert galaxy_["status"] == "keep" and galaxy_["galmet_status"] == "done"

    # 4 decimals in dex, the same value in every format.
    oh = galaxy_["oh_p50"]
    assert oh == round(oh, 4) and f"{oh:.4f}".rstrip("0") in as_csv
    for key in ("oh_p50", "oh_sigma", "oh_p16", "oh_p84", "log_mstar"):
        assert galaxy_[key] == round(galaxy_[key], 4), key
        assert float(rows_csv[0][key]) == galaxy_[key] == pytest.approx(table[key][0], abs=0)
    assert f"<TD>{galaxy_['oh_p50']:.4f}</TD>".encode() in as_vot

    # Empty sky: no prediction, "422: no galaxy"; a star keeps its prediction, flagged.
    assert empty["galmet_status"] == "failed" and empty["oh_p50"] is None
    assert empty["reason"].startswith("422: no galaxy at this position")
    assert rows_csv[2]["reason"] == empty["reason"] and rows_csv[2]["oh_p50"] == ""
    assert star["galmet_status"] == "done" and star["oh_p50"] is not None
    assert "not_a_galaxy" in star["flags"] and star["type"] == 6
    json.dumps(as_json, allow_nan=False)  # strict JSON throughout
