"""Object identification through the service, jobs and ``galmet predict``, over real HTTP
against the mock SkyServer, whose ``fGetNearestObjEq`` runs in its SQL engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from galmet.training.mock_skyserver import Faults, create_app, serve_in_thread
from tests.helpers import galaxy, service
from tests.test_jobs import results, submit, wait

API = "/api/v1"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def east(ra: float, dec: float, arcsec: float) -> tuple[float, float]:
    return float(ra + arcsec / 3600 / np.cos(np.radians(dec))), float(dec)


def stats(skyserver: str) -> dict:
    return httpx.get(skyserver.rsplit("/", 1)[0] + "/mock/stats").json()


@pytest.fixture
def api(tiny_model, mock_skyserver, database_url, tmp_path) -> Iterator[str]:
    with service(tiny_model, mock_skyserver, database_url, tmp_path) as url:
        yield url


def predict(api: str, ra: float, dec: float) -> httpx.Response:
    return httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)


@SQLITE
def test_a_position_2_arcsec_off_is_the_galaxy_there(api, mock_sky, mock_skyserver):
    ra, dec = galaxy(mock_sky, 11)
    obj_id = int(mock_sky.catalog()[11]["objID"])
    off = east(ra, dec, 2.0)
    first = predict(api, *off)
    assert first.status_code == 200, first.text
    p = first.json()
    assert (p["ra"], p["dec"]) == pytest.approx(off)  # the position asked for, echoed
    o = p["object"]
    assert o["objID"] == obj_id and o["type"] == 3 and o["type_name"] == "galaxy"
    assert (o["ra"], o["dec"]) == pytest.approx((ra, dec))
    assert o["separation_arcsec"] == pytest.approx(2.0, abs=0.01)
    assert o["explore_url"].endswith(f"/VisualTools/explore/summary?id={obj_id}")
    assert p["flags"] == [] and p["cached"] is False
    # The cutout is centred on the galaxy: the one fetched at its catalog position.
    cut = httpx.get(f"{api}{API}/cutout", params={"ra": off[0], "dec": off[1]})
    assert cut.content == mock_sky.cutout_jpeg(ra, dec, 0.396, 64, 64)
    # A third position, 1.5″ the other way: the same object, so the same cached answer.
    before = stats(mock_skyserver)["getjpeg"]
    third = predict(api, *east(ra, dec, -1.5)).json()
    assert third["cached"] is True and third["object"]["objID"] == obj_id
    assert third["oh_p50"] == p["oh_p50"]
    assert stats(mock_skyserver)["getjpeg"] == before
    # The identification is cached too: asking again costs SkyServer nothing.
    before = stats(mock_skyserver)
    assert predict(api, *off).json()["cached"] is True
    assert stats(mock_skyserver)["total"] == before["total"]


@SQLITE
def test_a_star_is_predicted_and_flagged_not_a_galaxy(api, mock_skyserver):
    from galmet.skyserver import parse_sql_csv

    # A bright catalogued field star of the mock sky (its PhotoObj.type is 6).
    query = "SELECT TOP 1 objID, ra, dec FROM Star WHERE petroMag_r < 17 ORDER BY petroMag_r"
    text = httpx.get(
        f"{mock_skyserver}/SkyServerWS/SearchTools/SqlSearch",
        params={"cmd": query, "format": "csv"},
    ).text
    star = parse_sql_csv(text)[0]
    r = predict(api, float(star["ra"]), float(star["dec"]))
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["object"]["objID"] == int(star["objID"]) and p["object"]["type_name"] == "star"
    # The star is drawn where it is catalogued: a source at the centre, only not a galaxy.
    assert p["flags"] == ["not_a_galaxy"] and p["oh_p50"] is not None


@SQLITE
def test_empty_sky_is_no_galaxy(api, mock_sky):
    ra, dec = galaxy(mock_sky, 0)
    r = predict(api, ra, dec - 40 / 3600)  # 40″ south: sky, no catalogued object
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["detail"].startswith("no galaxy at this position")
    assert set(body["flags"]) == {"no_galaxy", "no_object", "no_source_at_centre"}


@SQLITE
def test_sql_down_still_predicts_flagged_object_unknown(
    mock_sky, tiny_model, database_url, tmp_path
):
    faults = Faults(fail_rate=1.0, only="sqlsearch")
    with (
        serve_in_thread(create_app(mock_sky, faults=faults)) as sky_url,
        service(tiny_model, sky_url, database_url, tmp_path) as api,
    ):
        ra, dec = galaxy(mock_sky, 4)
        r = predict(api, ra, dec)
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["object"] is None and p["flags"] == ["object_unknown"]
        assert "object look-up failed" in p["object_error"] and "HTTP 500" in p["object_error"]
        # Nothing was cached as identified: each request asks SkyServer again.
        before = stats(sky_url)["sqlsearch"]
        assert predict(api, ra, dec).json()["flags"] == ["object_unknown"]
        assert stats(sky_url)["sqlsearch"] > before


@SQLITE
def test_a_300_target_job_identifies_in_few_sql_calls(api, mock_sky, mock_skyserver):
    rows = ["id,ra,dec"]
    for i in range(300):
        ra, dec = galaxy(mock_sky, i % 200)
        if i >= 200:  # another 100 positions 1″ off galaxies already listed
            ra, dec = east(ra, dec, 1.0)
        rows.append(f"t{i},{ra!r},{dec!r}")
    httpx.post(mock_skyserver.rsplit("/", 1)[0] + "/mock/reset")
    r = submit(api, "\n".join(rows) + "\n")
    assert r.status_code == 202, r.text
    status = wait(api, r.json()["id"], timeout=300)
    assert status["counts"]["done"] == 300
    assert stats(mock_skyserver)["sqlsearch"] <= 300 / 15
    got = results(api, r.json()["id"])
    want = [int(mock_sky.catalog()[i % 200]["objID"]) for i in range(300)]
    assert [row["objID"] for row in got["json"]] == want
    assert [int(row["objID"]) for row in got["csv"]] == want
    assert list(got["votable"]["objID"]) == want
    assert all(row["type"] == 3 for row in got["json"])
    seps = [row["separation_arcsec"] for row in got["json"]]
    assert max(seps[:200]) < 0.01 and min(seps[200:]) == pytest.approx(1.0, abs=0.01)
    # A position 1″ off a galaxy is the same galaxy, centred the same: the same answer.
    oh = [row["oh_p50"] for row in got["json"]]
    assert oh[200:] == oh[:100]


def test_galmet_predict_by_position_identifies_too(mock_sky, mock_skyserver, tiny_model, capsys):
    from galmet.cli import main

    ra, dec = galaxy(mock_sky, 11)
    off = east(ra, dec, 2.0)
    args = ["predict", "--model", str(tiny_model), "--ra", repr(off[0]), "--dec", repr(off[1])]
    assert main([*args, "--skyserver", mock_skyserver, "--json", "--tta", "1"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["object"]["objID"] == int(mock_sky.catalog()[11]["objID"])
    assert rec["object"]["separation_arcsec"] == pytest.approx(2.0, abs=0.01)
    assert rec["flags"] == []
    south = repr(float(dec) - 0.011)
    empty = ["predict", "--model", str(tiny_model), "--ra", repr(ra), "--dec", south]
    assert main([*empty, "--skyserver", mock_skyserver]) == 2
    assert "no galaxy at RA" in capsys.readouterr().err
