"""IVOA Simple Cone Search at /scs: pyvo, a real client, against the service and the mock
SkyServer on loopback."""

from __future__ import annotations

import io

import httpx
import pytest
import pyvo
from astropy.io.votable import parse

from galmet.app.scs import CONTENT_TYPE
from tests.helpers import galaxy, service

SR = 0.03  # degrees: around a mock galaxy, the galaxy and about a dozen field galaxies


@pytest.fixture(scope="module")
def api(tiny_model, mock_skyserver, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scs")
    url = f"sqlite:///{tmp}/scs.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp, skyserver_rate=0) as base:
        yield base


def votable(response: httpx.Response):
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse(io.BytesIO(response.content))


def test_pyvo_cone_search_returns_the_galaxies_with_their_predictions(api, mock_sky):
    ra, dec = galaxy(mock_sky, 0)
    table = pyvo.dal.SCSService(f"{api}/scs").search(pos=(ra, dec), radius=SR).to_table()
    assert len(table) >= 3
    # nearest first: the sample galaxy itself, then its field galaxies
    assert table["objID"][0] == str(mock_sky.catalog()[0]["objID"])
    assert list(table["separation_arcsec"]) == sorted(table["separation_arcsec"])
    assert max(table["separation_arcsec"]) <= SR * 3600
    assert str(table["ra"].unit) == "deg" and str(table["oh_p50"].unit) == "dex"
    assert not table["oh_p50"].mask.any() and all(table["reason"] == "")
    # the same prediction as a single one by position (which the cone search cached)
    single = httpx.get(f"{api}/api/v1/predict", params={"ra": ra, "dec": dec}).json()
    assert single["cached"] is True
    assert table["oh_p50"][0] == pytest.approx(single["oh_p50"], abs=1e-12)
    assert table["log_mstar"][0] == pytest.approx(single["log_mstar"], abs=1e-12)
    assert set(table["model_version"]) == {single["model_version"]}

    # a second search answers every galaxy from the cache, with the same values
    again = httpx.get(f"{api}/api/v1/scs", params={"RA": ra, "DEC": dec, "SR": SR, "VERB": 3})
    second = votable(again).get_first_table().to_table()
    assert list(second["objID"]) == list(table["objID"]) and all(second["cached"])
    assert list(second["oh_p50"]) == pytest.approx(list(table["oh_p50"]), abs=1e-12)


def test_fields_follow_scs_and_verb_chooses_the_columns(api, mock_sky):
    ra, dec = galaxy(mock_sky, 1)
    names = {}
    for verb in (1, 2, 3):
        # parameter names in any case; unknown ones ignored
        params = {"ra": ra, "Dec": dec, "SR": 0.005, "VERB": verb, "COLOUR": "blue"}
        doc = votable(httpx.get(f"{api}/scs", params=params, timeout=60))
        fields = doc.get_first_table().fields
        names[verb] = [f.name for f in fields]
        ucds = [f.ucd for f in fields]
        for ucd in ("ID_MAIN", "POS_EQ_RA_MAIN", "POS_EQ_DEC_MAIN"):
            assert ucds.count(ucd) == 1
        by_ucd = {f.ucd: f for f in fields}
        assert by_ucd["ID_MAIN"].datatype == "char"
        for ucd in ("POS_EQ_RA_MAIN", "POS_EQ_DEC_MAIN"):
            assert (by_ucd[ucd].datatype, str(by_ucd[ucd].unit)) == ("double", "deg")
        assert str(by_ucd["phys.abund.Z"].unit) == "dex"
    assert names[1] == ["objID", "ra", "dec", "oh_p50", "oh_sigma", "flags"]
    assert set(names[1]) < set(names[2]) < set(names[3])
    assert {"log_mstar", "reason", "model_version"} <= set(names[2])  # the model predicts mass
    assert {"cached", "explore_url"} <= set(names[3]) - set(names[2])


def test_sr_zero_answers_the_metadata(api):
    response = httpx.get(f"{api}/scs", params={"RA": 10, "DEC": 20, "SR": 0})
    assert response.status_code == 200
    doc = votable(response)
    table = doc.get_first_table()
    assert len(table.array) == 0
    assert [f.name for f in table.fields][:3] == ["objID", "ra", "dec"]
    params = {p.name: p for p in table.params}
    assert (params["MAX_SR"].value, str(params["MAX_SR"].unit)) == (0.1, "deg")
    assert params["MAX_ROWS"].value == 100
    infos = {i.name: i.value for i in doc.resources[0].infos}
    assert infos["QUERY_STATUS"] == "OK" and infos["max_sr"] == "0.1"


def test_an_empty_cone_is_a_table_without_rows(api):
    # far from every mock galaxy: no SDSS object there
    table = pyvo.dal.SCSService(f"{api}/scs").search(pos=(1.0, -80.0), radius=0.05).to_table()
    assert len(table) == 0 and "oh_p50" in table.colnames


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"RA": 400, "DEC": 0, "SR": 0.01}, "RA must be in [0, 360) degrees, got 400"),
        ({"RA": 10, "DEC": -91, "SR": 0.01}, "DEC must be in [-90, 90] degrees, got -91"),
        ({"RA": "ten", "DEC": 0, "SR": 0.01}, "RA must be a number in decimal degrees"),
        ({"RA": 10, "DEC": 0}, "SR is required"),
        ({"RA": 10, "DEC": 0, "SR": "nan"}, "SR must be finite"),
        ({"RA": 10, "DEC": 0, "SR": -1}, "SR must be 0 or more"),
        ({"RA": 10, "DEC": 0, "SR": 0.5}, "SR 0.5 is above the largest this service takes, 0.1"),
        ({"RA": 10, "DEC": 0, "SR": 0.01, "VERB": 4}, "VERB must be 1, 2 or 3"),
        ({"RA": 10, "DEC": 0, "SR": 0.01, "RESPONSEFORMAT": "csv"}, "only votable"),
    ],
)
def test_bad_parameters_are_an_error_votable(api, params, message):
    response = httpx.get(f"{api}/api/v1/scs", params=params)
    assert response.status_code == 400
    doc = votable(response)  # never JSON or HTML
    (error,) = [i for i in doc.infos if i.name == "Error"]
    assert message in error.value


def test_pyvo_raises_the_services_error_for_a_bad_ra(api):
    # pyvo wraps a position's RA into [0, 360): the bad value goes as a raw parameter
    with pytest.raises(pyvo.dal.DALQueryError, match=r"RA must be in \[0, 360\) degrees, got 400"):
        pyvo.dal.SCSService(f"{api}/scs").search(pos=(10.0, 0.0), radius=0.01, RA="400")


def test_row_cap_is_an_error_unless_maxrec_takes_the_nearest(
    tiny_model, mock_skyserver, mock_sky, tmp_path
):
    url = f"sqlite:///{tmp_path}/cap.sqlite3"
    ra, dec = galaxy(mock_sky, 0)
    cone = {"RA": ra, "DEC": dec, "SR": SR}
    with service(tiny_model, mock_skyserver, url, tmp_path, scs_max_rows=3) as base:
        response = httpx.get(f"{base}/scs", params=cone)
        assert response.status_code == 400
        (error,) = votable(response).infos
        assert "more than 3 galaxies" in error.value and "MAXREC" in error.value

        response = httpx.get(f"{base}/scs", params=cone | {"MAXREC": 2}, timeout=60)
        doc = votable(response)
        table = doc.get_first_table().to_table()
        assert len(table) == 2 and table["objID"][0] == str(mock_sky.catalog()[0]["objID"])
        infos = {i.name: i.value for i in doc.resources[0].infos}
        assert infos["QUERY_STATUS"] == "OVERFLOW" and infos["max_rows"] == "3"
        # MAXREC above the cap is held to it; MAXREC=0 is the metadata
        big = votable(httpx.get(f"{base}/scs", params=cone | {"MAXREC": 50}, timeout=60))
        assert len(big.get_first_table().array) == 3
        none = votable(httpx.get(f"{base}/scs", params=cone | {"MAXREC": 0}))
        assert len(none.get_first_table().array) == 0


def test_skyserver_down_is_an_error_votable(tiny_model, mock_sky, tmp_path):
    url = f"sqlite:///{tmp_path}/down.sqlite3"
    ra, dec = galaxy(mock_sky, 0)
    with service(tiny_model, "http://127.0.0.1:9/dr17", url, tmp_path) as base:
        response = httpx.get(f"{base}/scs", params={"RA": ra, "DEC": dec, "SR": 0.01}, timeout=60)
        assert response.status_code == 502
        (error,) = votable(response).infos
        assert error.value.startswith("SkyServer failed")


def test_a_galaxy_without_a_prediction_keeps_its_row_with_the_reason(
    tiny_model, mock_sky, tmp_path
):
    from galmet.training.mock_skyserver import create_app, serve_in_thread
    from galmet.training.mock_skyserver.faults import Faults

    ra, dec = galaxy(mock_sky, 0)
    no_cutouts = create_app(mock_sky, Faults(fail_rate=1.0, only="getjpeg"))
    with (
        serve_in_thread(no_cutouts) as skyserver,
        service(tiny_model, skyserver, f"sqlite:///{tmp_path}/f.sqlite3", tmp_path) as base,
    ):
        scs = pyvo.dal.SCSService(f"{base}/scs")
        table = scs.search(pos=(ra, dec), radius=0.005).to_table()
    assert len(table) >= 1 and table["objID"][0] == str(mock_sky.catalog()[0]["objID"])
    assert table["oh_p50"].mask.all() and table["oh_sigma"].mask.all()
    assert all(r.startswith("502: SkyServer failed") for r in table["reason"])
