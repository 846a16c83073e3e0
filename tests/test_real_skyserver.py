"""SkyServer's real answers, met by the client (over an in-process transport; the mock
SkyServer reproduces them over real HTTP in tests/test_mock_skyserver.py):

- ``getjpeg`` off the imaging footprint answers HTTP 404 with a JPEG body;
- ``SqlSearch`` refuses some queries with a 200 CSV whose one column is ``error_message``,
  and reports database errors as HTTP 500 with JSON ``ErrorMessage``;
- the server stops a query at 600 s: a client timeout is not retried;
- object identification: ``fGetNearestObjEq`` under ``CROSS APPLY``, many positions a query.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from galmet.objects import MAX_QUERY_CHARS, nearest_objects, nearest_queries
from galmet.skyserver import (
    DEFAULT_SQL_TIMEOUT,
    SERVER_SQL_LIMIT,
    SkyServerQueryError,
    SkyServerTimeout,
    SkyServerUpstreamError,
)
from tests.test_skyserver_client import GREY, client_for, counting, jpeg_bytes, run

# SkyServer draws its message on an image of its own size when a cutout is off the imaging.
OFF_FOOTPRINT = jpeg_bytes(np.full((64, 256, 3), 40))


def test_an_off_footprint_404_jpeg_is_a_blank_cutout_not_an_error():
    handler, calls = counting(
        [httpx.Response(404, content=OFF_FOOTPRINT, headers={"content-type": "image/jpeg"})]
    )

    async def go():
        async with client_for(handler, retries=3) as sky:
            return await sky.cutout(10.0, -80.0)

    cutout = run(go())
    assert cutout.off_footprint and cutout.blank and cutout.jpeg == OFF_FOOTPRINT
    assert len(calls) == 1  # an answer, not a failure: no retries


def test_a_404_that_is_not_a_jpeg_stays_an_error():
    handler, calls = counting([httpx.Response(404, text="Not Found")])

    async def go():
        async with client_for(handler, retries=3) as sky:
            await sky.cutout(10.0, 10.0)

    with pytest.raises(SkyServerUpstreamError, match="HTTP 404"):
        run(go())
    assert len(calls) == 1


def test_a_500_with_a_jpeg_body_is_an_upstream_error():
    handler, calls = counting([httpx.Response(500, content=GREY)])

    async def go():
        async with client_for(handler, retries=2) as sky:
            await sky.cutout(150.0, 2.0)

    with pytest.raises(SkyServerUpstreamError, match="HTTP 500"):
        run(go())
    assert len(calls) == 3


def test_a_refused_query_raises_the_servers_message_once():
    message = "Query error: TOP 1000000 exceeds the maximum of 500000 rows"
    handler, calls = counting([httpx.Response(200, text=f'#Table1\nerror_message\n"{message}"\n')])

    async def go():
        async with client_for(handler, retries=3) as sky:
            await sky.sql("SELECT TOP 1000000 objID FROM Galaxy")

    with pytest.raises(SkyServerQueryError) as info:
        run(go())
    assert str(info.value) == f"SkyServer refused the SQL query: {message}"
    assert len(calls) == 1


def test_a_database_error_in_json_is_raised_with_its_message_once():
    body = {"ErrorCode": 500, "ErrorType": "SqlException", "ErrorMessage": "Invalid column 'x'."}
    handler, calls = counting([httpx.Response(500, json=body)])

    async def go():
        async with client_for(handler, retries=3) as sky:
            await sky.sql("SELECT x FROM Galaxy")

    with pytest.raises(SkyServerQueryError, match="Invalid column 'x'."):
        run(go())
    assert len(calls) == 1


def test_sql_waits_longer_than_the_server_and_a_timeout_is_not_retried():
    assert DEFAULT_SQL_TIMEOUT > SERVER_SQL_LIMIT
    handler, calls = counting([0.5])

    async def go():
        async with client_for(handler, retries=3, sql_timeout=0.05) as sky:
            await sky.sql("SELECT objID FROM Galaxy")

    with pytest.raises(SkyServerTimeout):
        run(go())
    assert len(calls) == 1


def test_cutout_timeouts_keep_their_retries():
    handler, calls = counting([0.5])

    async def go():
        async with client_for(handler, retries=2, timeout=0.05) as sky:
            await sky.cutout(150.0, 2.0)

    with pytest.raises(SkyServerTimeout):
        run(go())
    assert len(calls) == 3


# ---------------------------------------------------------------------------- identification
def test_identification_queries_stay_under_the_url_budget():
    positions = [(150 + i * 1e-3, -2.2 - i * 1e-3) for i in range(1000)]
    queries = nearest_queries(positions, radius_arcsec=3)
    assert len(queries) <= 1000 // 15
    assert all(len(q) <= MAX_QUERY_CHARS for _, q in queries)
    assert sorted(i for members, _ in queries for i in members) == list(range(1000))
    members, query = queries[0]
    assert "CROSS APPLY dbo.fGetNearestObjEq(v.ra, v.dec, 0.05)" in query
    assert f"(0,{positions[0][0]:.7f},{positions[0][1]:.7f})" in query


def test_nearest_objects_maps_rows_back_to_positions():
    def handler(request: httpx.Request) -> httpx.Response:
        assert "fGetNearestObjEq" in request.url.params["cmd"]
        body = (
            "#Table1\ni,objID,type,ra,dec,distance,petroR90_r,petroMag_r\n"
            "2,1237648720693755918,6,150.002,2.002,0.01,1.2,16.5\n"
            "0,1237648720693755917,3,150.0001,2.0,0.002,5.5,17.1\n"
        )
        return httpx.Response(200, text=body)

    async def go():
        async with client_for(handler) as sky:
            return await nearest_objects(sky, [(150.0, 2.0), (151.0, 2.0), (150.002, 2.002)])

    first, nothing, star = run(go())
    assert nothing is None
    assert first.objID == 1237648720693755917 and first.is_galaxy
    assert first.separation_arcsec == pytest.approx(0.12)
    assert star.type_name == "star" and not star.is_galaxy and star.petroMag_r == 16.5


def test_the_client_pauses_nothing_else_while_sql_runs():
    """A smoke check that the retry machinery (tenacity) returns the response itself."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="#Table1\na\n1\n")

    async def go():
        async with client_for(handler) as sky:
            return await asyncio.gather(*(sky.sql("SELECT 1 AS a") for _ in range(3)))

    assert [int(t["a"][0]) for t in run(go())] == [1, 1, 1]


# ---------------------------------------------------------------------------- over real HTTP
# The mock SkyServer reproduces each behaviour; the commands meet them as they would the
# real service.
def test_download_lists_an_off_footprint_404_as_blank(tmp_path, capsys, mock_sky, mock_skyserver):
    from galmet.cli import main

    catalog = tmp_path / "catalog.csv"
    row = mock_sky.catalog()[0]
    catalog.write_text(f"objID,ra,dec\n1,10.0,-30.0\n{row['objID']},{row['ra']},{row['dec']}\n")
    code = main(["download", "--catalog", str(catalog), "--out", str(tmp_path / "dl"),
                 "--skyserver", mock_skyserver, "--size", "64"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    blank = (tmp_path / "dl" / "blank.csv").read_text().splitlines()
    failed = (tmp_path / "dl" / "failed.csv").read_text().splitlines()
    assert blank == ["objID,ra,dec", "1,10.0,-30.0"] and failed == ["objID,ra,dec,reason"]
    assert (tmp_path / "dl" / "images" / f"{row['objID']}.jpg").exists()


def test_catalog_prints_a_refused_query_in_one_line(tmp_path, capsys, mock_skyserver):
    from galmet.cli import main
    from galmet.training.mock_skyserver import MAX_ROWS

    code = main(["catalog", "--out", str(tmp_path / "c.csv"), "--skyserver", mock_skyserver,
                 "--page-size", str(MAX_ROWS), "--retries", "3"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err  # the largest page SkyServer allows is accepted
    small = create_mock_app_with_rows(max_rows=50)
    with small as url:
        reset(url)
        code = main(["catalog", "--out", str(tmp_path / "d.csv"), "--skyserver", url,
                     "--page-size", "60", "--retries", "3"])  # fmt: skip
        assert sql_count(url) == 1  # refused once, not retried
    errors = [line for line in capsys.readouterr().err.splitlines() if "galmet: error" in line]
    assert code == 2 and len(errors) == 1
    assert "SkyServer refused the SQL query: Query error: TOP 60 asks for more rows" in errors[0]


def test_a_sql_timeout_is_not_retried_over_http(mock_sky):
    from galmet.skyserver import SkyServerClient
    from galmet.training.mock_skyserver import Faults, create_app, serve_in_thread

    faults = Faults(timeout_rate=1.0, hang_seconds=1.0, only="sqlsearch")
    with serve_in_thread(create_app(mock_sky, faults=faults)) as url:
        reset(url)

        async def go():
            async with SkyServerClient(url, retries=3, sql_timeout=0.2, rate=None) as sky:
                await sky.sql("SELECT TOP 1 objID FROM Galaxy")

        with pytest.raises(SkyServerTimeout):
            asyncio.run(go())
        assert sql_count(url) == 1


def test_duplicate_objids_across_a_page_boundary_give_one_row_each(tmp_path, capsys, mock_sky):
    from astropy.table import Table

    from galmet.cli import main
    from galmet.training.mock_skyserver import create_app, serve_in_thread

    with serve_in_thread(create_app(mock_sky, duplicate_every=3)) as url:
        # Pages of 7 rows with every third galaxy twice: boundaries fall between duplicates.
        code = main(["catalog", "--out", str(tmp_path / "c.csv"), "--skyserver", url,
                     "--page-size", "7"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    got = Table.read(tmp_path / "c.csv", format="ascii.csv")
    want = mock_sky.catalog()
    assert list(got["objID"]) == list(want["objID"])  # one row per objID, none lost
    np.testing.assert_array_equal(got["zErr"], want["zErr"])  # the better spectrum kept
    assert "duplicate spectra of the same objID dropped" in err


def test_identification_runs_in_the_mocks_sql_engine(mock_sky, mock_skyserver):
    from galmet.skyserver import SkyServerClient

    row = mock_sky.catalog()[3]
    ra, dec = float(row["ra"]), float(row["dec"])
    off = (ra + 2.0 / 3600 / np.cos(np.radians(dec)), dec)  # 2″ east

    async def go():
        async with SkyServerClient(mock_skyserver, rate=None) as sky:
            return await nearest_objects(sky, [off, (150.0, 85.0)], radius_arcsec=3)

    found, empty = run(go())
    assert empty is None
    assert found.objID == int(row["objID"]) and found.is_galaxy
    assert found.separation_arcsec == pytest.approx(2.0, abs=0.01)
    assert (found.ra, found.dec) == pytest.approx((ra, dec))
    assert found.petroR90_r == pytest.approx(float(row["petroR90_r"]))


# helpers for the tests over HTTP
def reset(url: str) -> None:
    httpx.post(url.rsplit("/", 1)[0] + "/mock/reset")


def sql_count(url: str) -> int:
    return httpx.get(url.rsplit("/", 1)[0] + "/mock/stats").json()["sqlsearch"]


def create_mock_app_with_rows(max_rows: int):
    from galmet.training.mock_skyserver import create_app, serve_in_thread
    from galmet.training.mocksky import MockSky

    return serve_in_thread(create_app(MockSky(20, seed=5), max_rows=max_rows))
