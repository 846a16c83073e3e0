"""``galmet.client``: the Python client against a real service on loopback (embedded mode)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table

from galmet.client import Client, GalmetServerError
from galmet.errors import GalmetError
from galmet.model import file_sha256
from tests.helpers import galaxy, model_cutouts, service

OFF_FOOTPRINT = (1.0, -80.0)  # outside the mock imaging: a blank cutout


@pytest.fixture(scope="module")
def api(tiny_model, mock_skyserver, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client")
    url = f"sqlite:///{tmp}/client.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp, skyserver_rate=0) as base:
        yield base


@pytest.fixture
def client(api):
    with Client(api, timeout=60) as c:
        yield c


def test_predict_takes_degrees_strings_and_a_skycoord(client, mock_sky):
    ra, dec = galaxy(mock_sky, 2)
    first = client.predict(ra, dec)
    assert first["object"]["objID"] == int(mock_sky.catalog()[2]["objID"])
    coord = SkyCoord(ra * u.deg, dec * u.deg)
    sexagesimal = client.predict(
        coord.ra.to_string(u.hourangle, sep=":", precision=4),
        coord.dec.to_string(sep=":", precision=3, alwayssign=True),
    )
    by_coord = client.predict(coord)
    for other in (sexagesimal, by_coord):
        assert other["cached"] is True and other["oh_p50"] == first["oh_p50"]


def test_predict_image_from_a_path_or_bytes(client, tiny_model, mock_sky, tmp_path):
    (jpeg,) = model_cutouts(tiny_model, mock_sky, [galaxy(mock_sky, 3)])
    path = tmp_path / "cutout.jpg"
    path.write_bytes(jpeg)
    from_path = client.predict_image(path)
    from_bytes = client.predict_image(jpeg)
    assert from_path["source"] == "image" and from_path["oh_p50"] is not None
    assert from_bytes["oh_p50"] == from_path["oh_p50"] and from_bytes["cached"] is True


def test_model_describes_the_checkpoint(client, tiny_model):
    model = client.model()
    assert model["version"] == file_sha256(tiny_model)
    assert model["outputs"] == ["oh_p50", "lgm_tot_p50"]


def targets(mock_sky) -> Table:
    """20 rows: 17 mock galaxies, one off the imaging, one masked RA, one unreadable RA; a
    catalog column of its own named oh_p50, and a column the service never sees."""
    ra = [galaxy(mock_sky, i)[0] for i in range(17)] + [OFF_FOOTPRINT[0], 0.0, 0.0]
    dec = [galaxy(mock_sky, i)[1] for i in range(17)] + [OFF_FOOTPRINT[1], 10.0, 10.0]
    table = Table()
    table["name"] = [f"t{i}" for i in range(20)]
    table["ra"] = MaskedColumn(ra, unit=u.deg, mask=[False] * 18 + [True, False])
    table["dec"] = MaskedColumn(dec, unit=u.deg)
    table["ra"][19] = np.nan  # not a position
    table["oh_p50"] = MaskedColumn(np.linspace(8.5, 9.1, 20), unit=u.dex)
    table["note"] = ["keep me"] * 20
    return table


def test_predict_table_round_trips_a_20_row_table(client, mock_sky, capsys):
    table = targets(mock_sky)
    out = client.predict_table(table, id="name", poll=0.1)
    err = capsys.readouterr().err
    assert "galmet job" in err and "20/20" in err  # the progress bar reached the end

    # the same table back, in order, with the prediction columns added
    assert len(out) == 20 and out.colnames[:5] == table.colnames
    assert list(out["name"]) == list(table["name"]) and list(out["note"]) == ["keep me"] * 20
    assert list(out["oh_p50"]) == pytest.approx(list(table["oh_p50"]))  # the catalog's own
    assert out["oh_p50_galmet"].unit == u.dex and out["oh_sigma"].unit == u.dex
    assert out["separation_arcsec"].unit == u.arcsec
    assert list(out["status"]) == ["done"] * 17 + ["failed", "invalid", "invalid"]

    predicted = out["oh_p50_galmet"]
    assert not predicted.mask[:17].any() and predicted.mask[17:].all()
    assert out["log_mstar"].mask[17:].all() and not out["log_mstar"].mask[:17].any()
    assert list(out["objID"][:17]) == [int(mock_sky.catalog()[i]["objID"]) for i in range(17)]
    assert out["reason"].mask[:17].all()
    assert "blank" in out["reason"][17] and "row 19" in out["reason"][18]
    assert "row 20" in out["reason"][19]

    # the values are the service's own predictions for those galaxies
    single = client.predict(*galaxy(mock_sky, 5))
    assert single["cached"] is True and predicted[5] == pytest.approx(single["oh_p50"], abs=1e-12)


def test_predict_table_reads_files_astropy_reads(client, mock_sky, tmp_path):
    table = Table(
        {
            "RA_deg": [galaxy(mock_sky, i)[0] for i in range(3)],
            "Dec": [galaxy(mock_sky, i)[1] for i in range(3)],
        }
    )
    for name in ("t.csv", "t.fits", "t.vot"):
        path = tmp_path / name
        table.write(path, format="votable" if name.endswith(".vot") else None)
        out = client.predict_table(path, ra="RA_deg", dec="Dec", poll=0.1, progress=False)
        assert list(out["status"]) == ["done"] * 3 and not out["oh_p50"].mask.any()


def test_a_table_in_hours_and_sexagesimal_strings(client, mock_sky):
    coords = SkyCoord([galaxy(mock_sky, i) for i in range(2)], unit="deg")
    hours = Table({"ra": coords.ra.hourangle * u.hourangle, "dec": coords.dec.deg})
    texts = Table(
        {"ra": coords.ra.to_string(u.hourangle, sep=":", precision=4),
         "dec": coords.dec.to_string(sep=":", precision=3, alwayssign=True)}
    )  # fmt: skip
    degrees = client.predict_table(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), poll=0.1)
    for other in (hours, texts):
        out = client.predict_table(other, poll=0.1, progress=False)
        assert list(out["objID"]) == list(degrees["objID"])
        assert list(out["oh_p50"]) == list(degrees["oh_p50"])


def test_server_errors_raise_one_exception_with_the_servers_detail(client, api, tmp_path):
    with pytest.raises(GalmetServerError) as caught:
        client.predict(400, 0)
    assert caught.value.status == 422 and "[0, 360)" in caught.value.detail
    assert "\n" not in str(caught.value)

    with pytest.raises(GalmetServerError) as caught:
        client.predict(*OFF_FOOTPRINT)
    assert caught.value.status == 422 and "off_footprint" in caught.value.flags

    with pytest.raises(GalmetServerError) as caught:
        client.predict_image(b"not an image")
    assert caught.value.status == 422 and "not an image" in caught.value.detail

    with pytest.raises(GalmetServerError) as caught:
        client.job("00000000-0000-0000-0000-000000000000")
    assert caught.value.status == 404

    with Client("http://127.0.0.1:9") as nowhere, pytest.raises(GalmetServerError) as caught:
        nowhere.model()
    assert caught.value.status is None and "cannot reach" in caught.value.detail

    with pytest.raises(GalmetError, match="no column 'RA'"):
        client.predict_table(Table({"ra": [1.0], "dec": [2.0]}), ra="RA")
    with pytest.raises(GalmetError, match="no such file"):
        client.predict_table(tmp_path / "missing.fits")
