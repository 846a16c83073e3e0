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
