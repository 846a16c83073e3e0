"""Serving a model trained on petro-scaled cutouts: each cutout's scale comes from the
petroR90_r of the SDSS object identified at the position; no object, a clear 422."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from galmet.cli import main as galmet
from galmet.scale_mode import petro_scale
from tests.helpers import galaxy, offline_predictions, service, tiny_checkpoint
from tests.test_jobs import submit, wait

API = "/api/v1"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def petro_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("petro") / "petro.pt"
    tiny_checkpoint(
        config={"image_size": 64, "scale_mode": "petro"},
        sigma_scale={1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0},
    ).save(path)
    return path


@pytest.fixture
def api(petro_model, mock_skyserver, database_url, tmp_path) -> Iterator[str]:
    with service(petro_model, mock_skyserver, database_url, tmp_path) as url:
        yield url


def petro_jpeg(mock_sky, i: int) -> bytes:
    """The galaxy's 64 px cutout at its own petro scale: what the model must see."""
    row = mock_sky.catalog()[i]
    scale = petro_scale(float(row["petroR90_r"]), 64)
    return mock_sky.cutout_jpeg(float(row["ra"]), float(row["dec"]), scale, 64, 64)


@SQLITE
def test_by_position_the_scale_comes_from_the_identified_galaxy(api, mock_sky, petro_model):
    ra, dec = galaxy(mock_sky, 11)
    r = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["object"]["objID"] == int(mock_sky.catalog()[11]["objID"])
    (want,) = offline_predictions(petro_model, [petro_jpeg(mock_sky, 11)], 2)
    assert p["oh_p50"] == pytest.approx(want["oh_p50"], abs=1e-5)
    cut = httpx.get(f"{api}{API}/cutout", params={"ra": ra, "dec": dec}, timeout=60)
    assert cut.content == petro_jpeg(mock_sky, 11)
    assert httpx.get(f"{api}{API}/models").json()["pixel_scale"] is None


@SQLITE
def test_no_identified_object_is_a_422_saying_why(api, mock_sky):
    ra, dec = galaxy(mock_sky, 0)
    r = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec - 40 / 3600}, timeout=60)
    assert r.status_code == 422, r.text
    assert "petroR90_r" in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert r.json()["flags"] == ["no_petro_radius"]


@SQLITE
def test_uploads_are_taken_as_they_are_flagged(api, mock_sky):
    files = {"file": ("g.jpg", petro_jpeg(mock_sky, 3), "image/jpeg")}
    r = httpx.post(f"{api}{API}/predict/image", files=files, timeout=60)
    assert r.status_code == 200, r.text
    assert "petro_scale_assumed" in r.json()["flags"]


@SQLITE
def test_job_rows_use_the_identified_radius_and_fail_without_one(api, mock_sky, petro_model):
    ra, dec = galaxy(mock_sky, 5)
    r = submit(api, f"id,ra,dec\ng,{ra!r},{dec!r}\nsky,{ra!r},{dec - 40 / 3600!r}\n")
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    status = wait(api, job)
    assert status["counts"]["done"] == 1 and status["counts"]["failed"] == 1, status
    rows = {row["id"]: row for row in httpx.get(f"{api}{API}/jobs/{job}/results").json()}
    (want,) = offline_predictions(petro_model, [petro_jpeg(mock_sky, 5)], 2)
    assert rows["g"]["oh_p50"] == pytest.approx(want["oh_p50"], abs=1e-5)
    assert rows["sky"]["status"] == "failed" and "petroR90_r" in rows["sky"]["reason"]


@SQLITE
def test_a_jobs_own_petro_radius_serves_where_identification_gives_none(api, mock_sky, petro_model):
    ra, dec = galaxy(mock_sky, 5)
    sky = dec - 40 / 3600  # no SDSS object here: no identified radius
    r = submit(
        api,
        "id,ra,dec,petroR90_r\n"
        f"g,{ra!r},{dec!r},99\n"  # identified: the object's radius wins over the row's
        f"own,{ra!r},{sky!r},4.5\n"  # the row's radius frames the cutout: empty sky, said so
        f"bad,{ra!r},{sky!r},-1\n",
    )
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    wait(api, job)
    rows = {row["id"]: row for row in httpx.get(f"{api}{API}/jobs/{job}/results").json()}
    (want,) = offline_predictions(petro_model, [petro_jpeg(mock_sky, 5)], 2)
    assert rows["g"]["oh_p50"] == pytest.approx(want["oh_p50"], abs=1e-5)
    assert rows["g"]["petroR90_r"] == "99"  # the user's column comes back as given
    assert rows["own"]["reason"].startswith("422: no galaxy at this position")
    assert rows["bad"]["reason"] == (
        "422: the row's petroR90_r must be a positive number of arcsec, not '-1'"
    )


def test_predict_by_position_on_the_command_line(petro_model, mock_sky, mock_skyserver, capsys):
    ra, dec = galaxy(mock_sky, 11)
    args = ["predict", "--model", str(petro_model), "--skyserver", mock_skyserver]
    args += ["--device", "cpu", "--tta", "2", "--json"]
    assert galmet([*args, "--ra", str(ra), "--dec", str(dec)]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    (want,) = offline_predictions(petro_model, [petro_jpeg(mock_sky, 11)], 2)
    assert rec["oh_p50"] == pytest.approx(want["oh_p50"], abs=1e-5)
    assert galmet([*args, "--ra", str(ra), f"--dec={dec - 40 / 3600}"]) == 2
    assert "petroR90_r" in capsys.readouterr().err
