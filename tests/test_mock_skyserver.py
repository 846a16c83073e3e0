"""The mock SkyServer answers getjpeg and SqlSearch in SkyServer's formats, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from galmet.errors import GalmetError
from galmet.images import decode_jpeg, is_blank
from galmet.skyserver import SkyServerClient, SkyServerError
from galmet.training.mock_skyserver import (
    Faults,
    create_app,
    load_sky,
    serve_in_thread,
    translate_tsql,
)

JPEG = "/SkyServerWS/ImgCutout/getjpeg"
SQL = "/SkyServerWS/SearchTools/SqlSearch"


def root(base_url: str) -> str:
    """The server root of a base URL like http://127.0.0.1:PORT/dr17."""
    return base_url.rsplit("/", 1)[0]


def sql(base_url: str, cmd: str) -> httpx.Response:
    return httpx.get(base_url + SQL, params={"cmd": cmd, "format": "csv"})


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB"))


def brightest(sky) -> dict:
    cat = sky.catalog()
    return cat[int(np.argmin(cat["petroMag_r"]))]


# --- getjpeg ---------------------------------------------------------------------------


def test_getjpeg_returns_jpeg_of_requested_size(mock_sky, mock_skyserver):
    row = brightest(mock_sky)
    params = {"ra": row["ra"], "dec": row["dec"], "scale": 0.296, "width": 100, "height": 80}
    r = httpx.get(mock_skyserver + JPEG, params=params)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert pixels(r.content).shape == (80, 100, 3)


def test_getjpeg_defaults_are_skyservers(mock_sky, mock_skyserver):
    row = brightest(mock_sky)
    r = httpx.get(mock_skyserver + JPEG, params={"ra": row["ra"], "dec": row["dec"]})
    assert r.status_code == 200
    assert pixels(r.content).shape == (128, 128, 3)
    # Same picture as the mock sky renders at SkyServer's default scale of 0.396127"/px.
    assert r.content == mock_sky.cutout_jpeg(row["ra"], row["dec"], 0.396127, 128, 128)


def test_getjpeg_galaxy_is_brighter_at_the_centre(mock_sky, mock_skyserver):
    row = brightest(mock_sky)
    params = {"ra": row["ra"], "dec": row["dec"], "scale": 0.296, "width": 128, "height": 128}
    image = pixels(httpx.get(mock_skyserver + JPEG, params=params).content).sum(axis=-1)
    centre = image[60:68, 60:68].mean()
    assert centre > np.median(image) + 100
    assert centre > image[:16, :16].mean() + 100  # a corner, off the galaxy


def test_getjpeg_off_footprint_is_a_404_with_a_jpeg_body(mock_skyserver):
    """As current SkyServerWS answers: the error drawn on an image, with HTTP 404."""
    r = httpx.get(mock_skyserver + JPEG, params={"ra": 10.0, "dec": -30.0, "scale": 0.296})
    assert r.status_code == 404
    assert r.headers["content-type"] == "image/jpeg"
    assert pixels(r.content).shape == (128, 128, 3)


def test_getjpeg_off_footprint_near_black_as_older_skyservers(mock_sky):
    with serve_in_thread(create_app(mock_sky, off_footprint="black")) as url:
        r = httpx.get(url + JPEG, params={"ra": 10.0, "dec": -30.0, "scale": 0.296})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert np.percentile(pixels(r.content), 99) < 16
    assert is_blank(r.content)


def test_getjpeg_accepts_sexagesimal(mock_skyserver):
    params = {"ra": "10:00:00", "dec": "+20:00:00", "width": 64, "height": 64}
    r = httpx.get(mock_skyserver + JPEG, params=params)
    assert r.status_code == 200
    assert pixels(r.content).shape == (64, 64, 3)


@pytest.mark.parametrize(
    "params",
    [
        {"ra": 180, "dec": 30, "width": 63},
        {"ra": 180, "dec": 30, "width": 2049},
        {"ra": 180, "dec": 30, "height": 63},
        {"ra": 180, "dec": 30, "width": "abc"},
        {"ra": 180, "dec": 30, "width": 100.5},
        {"ra": "abc", "dec": 30},
        {"ra": "nan", "dec": 30},
        {"ra": 360, "dec": 30},
        {"ra": 180, "dec": 90.5},
        {"dec": 30},
        {"ra": 180},
        {"ra": 180, "dec": 30, "scale": "big"},
        {"ra": 180, "dec": 30, "scale": 0},
    ],
)
def test_getjpeg_bad_parameters_are_skyserver_errors(mock_skyserver, params):
    r = httpx.get(mock_skyserver + JPEG, params=params)
    assert r.status_code == 400
    body = r.json()
    assert body["ErrorCode"] == 400
    assert body["ErrorType"] == "BadRequest"
    assert body["ErrorMessage"] and "\n" not in body["ErrorMessage"]


def test_any_release_is_served_and_others_are_not_found(mock_skyserver):
    other = root(mock_skyserver) + "/dr16"
    assert sql(other, "SELECT TOP 1 objID FROM Galaxy").status_code == 200
    assert sql(root(mock_skyserver) + "/nonsense", "SELECT 1").status_code == 404


# --- SqlSearch -------------------------------------------------------------------------


def test_sqlsearch_runs_real_sql(mock_sky, mock_skyserver):
    r = sql(mock_skyserver, "SELECT TOP 5 objID FROM Galaxy ORDER BY objID")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert lines[:2] == ["#Table1", "objID"]
    expected = sorted(int(i) for i in mock_sky.population["objID"])[:5]
    assert [int(x) for x in lines[2:]] == expected


def test_sqlsearch_joins_the_skyserver_tables(mock_sky, mock_skyserver):
    query = """
        -- spectra of galaxies with MPA-JHU metallicities
        SELECT TOP 3 p.objID, s.specObjID, s.z, e.oh_p50, s.class
        FROM dbo.PhotoObj AS p
        JOIN SpecObj AS s ON s.bestObjID = p.objID
        JOIN GalSpecInfo AS i ON i.specObjID = s.specObjID
        JOIN GalSpecExtra AS e ON e.specObjID = s.specObjID
        JOIN GalSpecLine AS l ON l.specObjID = s.specObjID
        WHERE e.oh_p50 != -9999 ORDER BY s.specObjID DESC
    """
    r = sql(mock_skyserver, query)
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    assert lines[1] == "objID,specObjID,z,oh_p50,class"
    assert len(lines) == 2 + 3
    pop = mock_sky.population
    pop = pop[pop["oh_p50"] != -9999]
    first = lines[2].split(",")
    top = pop[int(np.argmax(pop["specObjID"]))]
    assert int(first[1]) == top["specObjID"]
    assert float(first[2]) == top["z"]  # doubles come back exactly
    assert first[4] == "GALAXY"


def test_sqlsearch_error_is_json_and_the_client_raises(mock_skyserver):
    r = sql(mock_skyserver, "SELEC objID FRM Galaxy")
    assert r.status_code == 500
    body = r.json()
    assert body["ErrorType"] == "InternalServerError"
    assert "syntax error" in body["ErrorMessage"]

    async def query() -> None:
        async with SkyServerClient(mock_skyserver, retries=0, rate=None) as client:
            await client.sql("SELECT nosuchcolumn FROM Galaxy")

    with pytest.raises(SkyServerError, match="nosuchcolumn"):
        asyncio.run(query())


def test_sqlsearch_missing_cmd_is_bad_request(mock_skyserver):
    r = httpx.get(mock_skyserver + SQL, params={"format": "csv"})
    assert r.status_code == 400
    assert r.json()["ErrorType"] == "BadRequest"


def test_sqlsearch_database_is_read_only(mock_skyserver):
    assert sql(mock_skyserver, "DROP TABLE PhotoObjAll").status_code == 500
    assert sql(mock_skyserver, "DELETE FROM SpecObjAll").status_code == 500
    assert sql(mock_skyserver, "SELECT TOP 1 objID FROM PhotoObjAll").status_code == 200


def test_sqlsearch_truncates_silently_at_the_row_limit(mock_sky):
    with serve_in_thread(create_app(mock_sky, max_rows=7)) as url:
        r = sql(url, "SELECT objID FROM PhotoObj")
    assert r.status_code == 200
    assert len(r.text.splitlines()) == 2 + 7


def test_translate_tsql():
    assert translate_tsql("SELECT TOP 10 a FROM dbo.T ORDER BY a;") == (
        "SELECT a FROM T ORDER BY a\nLIMIT 10"
    )
    assert translate_tsql("select distinct top (3) a from t") == "SELECT distinct a from t\nLIMIT 3"
    assert translate_tsql("/* c */ SELECT TOP 1 a -- note\nFROM t") == "SELECT a \nFROM t\nLIMIT 1"
    assert translate_tsql("SELECT a FROM t") == "SELECT a FROM t"


# --- faults and stats ------------------------------------------------------------------


def test_fail_rate_one_gives_500s(mock_sky):
    row = brightest(mock_sky)
    with serve_in_thread(create_app(mock_sky, faults=Faults(fail_rate=1.0))) as url:
        r1 = httpx.get(url + JPEG, params={"ra": row["ra"], "dec": row["dec"]})
        r2 = sql(url, "SELECT TOP 1 objID FROM Galaxy")
        stats = httpx.get(root(url) + "/mock/stats").json()
    assert r1.status_code == r2.status_code == 500
    assert stats["injected"]["fail"] == 2


def test_truncated_jpeg_does_not_decode(mock_sky):
    row = brightest(mock_sky)
    params = {"ra": row["ra"], "dec": row["dec"], "scale": 0.296}
    with serve_in_thread(create_app(mock_sky, faults=Faults(truncate_rate=1.0))) as url:
        r = httpx.get(url + JPEG, params=params)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(r.content)
    full = mock_sky.cutout_jpeg(row["ra"], row["dec"], 0.296, 128, 128)
    assert r.content == full[: len(full) // 2]
    with pytest.raises(ValueError):
        decode_jpeg(r.content)
    with pytest.raises(OSError), Image.open(io.BytesIO(r.content)) as im:
        im.load()


def test_latency_delays_every_answer(mock_sky):
    query = "SELECT TOP 1 objID FROM Galaxy"
    with serve_in_thread(create_app(mock_sky, faults=Faults(latency=0.4))) as url:
        start = time.perf_counter()
        assert sql(url, query).status_code == 200
        elapsed = time.perf_counter() - start
    assert elapsed >= 0.4


def test_timeouts_hang_and_the_server_still_stops(mock_sky):
    faults = Faults(timeout_rate=1.0, hang_seconds=30)
    start = time.perf_counter()
    with serve_in_thread(create_app(mock_sky, faults=faults)) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url + SQL, params={"cmd": "SELECT 1", "format": "csv"}, timeout=0.3)
        stats = httpx.get(root(url) + "/mock/stats").json()
    assert stats["injected"]["timeout"] == 1
    assert time.perf_counter() - start < 10


def test_faults_are_deterministic_and_retries_draw_again(mock_sky):
    def statuses() -> list[int]:
        faults = Faults(fail_rate=0.5, seed=7)
        with serve_in_thread(create_app(mock_sky, faults=faults)) as url, httpx.Client() as http:
            # Each URL twice: a retry of a failed request gets a fresh draw.
            return [
                http.get(url + SQL, params={"cmd": f"SELECT {i}"}).status_code
                for i in range(20)
                for _attempt in range(2)
            ]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500}
    assert first[0::2] != first[1::2]


def test_stats_count_requests_per_endpoint(mock_sky, mock_skyserver):
    row = brightest(mock_sky)
    assert httpx.post(root(mock_skyserver) + "/mock/reset").status_code == 200
    for _ in range(2):
        httpx.get(mock_skyserver + JPEG, params={"ra": row["ra"], "dec": row["dec"]})
    sql(mock_skyserver, "SELECT TOP 1 objID FROM Galaxy")
    stats = httpx.get(root(mock_skyserver) + "/mock/stats").json()
    assert stats["getjpeg"] == 2
    assert stats["sqlsearch"] == 1
    assert stats["total"] == 3
    httpx.post(root(mock_skyserver) + "/mock/reset")
    assert httpx.get(root(mock_skyserver) + "/mock/stats").json()["total"] == 0


def test_fault_rates_are_checked():
    with pytest.raises(GalmetError, match="fail-rate"):
        Faults(fail_rate=1.5)


# --- building the sky ------------------------------------------------------------------


def test_load_sky_from_simulate_dir(tmp_path, mock_sky):
    (tmp_path / "mock.json").write_text(json.dumps(mock_sky.metadata()))
    sky = load_sky(tmp_path, n=5, seed=99)
    assert list(sky.population["objID"]) == list(mock_sky.population["objID"])


def test_load_sky_needs_mock_json(tmp_path):
    with pytest.raises(GalmetError, match="mock.json"):
        load_sky(tmp_path, n=5, seed=0)


def test_cutout_cache_renders_each_cutout_once(mock_sky):
    calls = []

    class Counting:
        population = mock_sky.population

        def cutout_jpeg(self, *args):
            calls.append(args)
            return mock_sky.cutout_jpeg(*args)

    ra, dec = float(mock_sky.catalog()[0]["ra"]), float(mock_sky.catalog()[0]["dec"])
    params = {"ra": ra, "dec": dec, "scale": 0.396, "width": 64, "height": 64}
    with serve_in_thread(create_app(Counting(), cutout_cache=10)) as url:
        first = httpx.get(f"{url}/SkyServerWS/ImgCutout/getjpeg", params=params)
        again = httpx.get(f"{url}/SkyServerWS/ImgCutout/getjpeg", params=params)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and len(calls) == 1


def test_mock_skyserver_with_data_loads_that_sky_and_says_so(tmp_path, capsys, monkeypatch):
    import uvicorn

    from galmet.cli import main

    (tmp_path / "mock.json").write_text(json.dumps({"n": 12, "seed": 5, "config": {}}))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # no serving
    assert main(["mock-skyserver", "--data", str(tmp_path), "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert f"loading the mock sky of {tmp_path}" in err and "building" not in err
    assert "spectra at http://127.0.0.1:" in err
    assert main(["mock-skyserver", "--n", "12", "--port", "0"]) == 0
    assert "building a mock sky of 12 galaxies" in capsys.readouterr().err
