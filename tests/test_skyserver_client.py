"""The shared SkyServer client: CSV parsing, retries, politeness, JPEG checks, blank cutouts."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from galmet.images import decode_jpeg, is_blank
from galmet.skyserver import (
    SkyServerClient,
    SkyServerError,
    SkyServerTimeout,
    SkyServerUpstreamError,
    parse_sql_csv,
)

BASE = "http://sky.test/dr17"


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


GREY = jpeg_bytes(np.full((128, 128, 3), 100))


def client_for(handler, **kwargs) -> SkyServerClient:
    kwargs = {"rate": None, "backoff": 0.001, **kwargs}
    return SkyServerClient(BASE, transport=httpx.MockTransport(handler), **kwargs)


def run(coro):
    return asyncio.run(coro)


# --- parse_sql_csv ---------------------------------------------------------------------


def test_parse_sql_csv_types():
    body = (
        "#Table1\n"
        "objID,ra,dec,class\n"
        "1237648720693755918,150.0883,2.2125,GALAXY\n"
        "1237648720693755919,151.5,-0.75,GALAXY\n"
    )
    table = parse_sql_csv(body)
    assert table.colnames == ["objID", "ra", "dec", "class"]
    assert table["objID"].dtype == np.int64
    assert table["objID"][0] == 1237648720693755918  # no float round-off
    assert table["ra"].dtype.kind == "f"
    assert table["dec"][1] == -0.75
    assert list(table["class"]) == ["GALAXY", "GALAXY"]


def test_parse_sql_csv_empty_result():
    table = parse_sql_csv("#Table1\nobjID,ra,dec\n")
    assert len(table) == 0
    assert table.colnames == ["objID", "ra", "dec"]
    assert len(parse_sql_csv("#Table1\n")) == 0


@pytest.mark.parametrize(
    "body",
    [
        "<html><head><title>Error</title></head><body><h1>SQL error</h1>\n"
        "<p>Incorrect syntax near 'FORM'.</p></body></html>",
        "ERROR: Query timed out\n after 600 seconds",
        '{"ErrorCode": 500, "ErrorType": "InternalServerError", "ErrorMessage": "Bad\\nquery"}',
        "",
    ],
)
def test_parse_sql_csv_error_page(body):
    with pytest.raises(SkyServerError) as info:
        parse_sql_csv(body)
    message = str(info.value)
    assert "\n" not in message and "<" not in message
    if "FORM" in body:
        assert "Incorrect syntax near 'FORM'." in message


def test_sql_over_http():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/dr17/SkyServerWS/SearchTools/SqlSearch"
        assert request.url.params["format"] == "csv"
        assert request.url.params["cmd"] == "SELECT TOP 1 objID, ra FROM Galaxy"
        return httpx.Response(200, text="#Table1\nobjID,ra\n42,10.5\n")

    async def go():
        async with client_for(handler) as sky:
            return await sky.sql("SELECT TOP 1 objID, ra FROM Galaxy")

    table = run(go())
    assert table["objID"][0] == 42 and table["ra"][0] == 10.5


# --- retries ---------------------------------------------------------------------------


def counting(responses):
    """A handler answering from ``responses`` in turn (the last one repeats), counting calls."""
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = responses[min(len(calls) - 1, len(responses) - 1)]
        if isinstance(answer, float):  # hang this long
            await asyncio.sleep(answer)
            return httpx.Response(200, content=GREY)
        return answer

    return handler, calls


def test_cutout_request_and_validation():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/dr17/SkyServerWS/ImgCutout/getjpeg"
        p = request.url.params
        assert (float(p["ra"]), float(p["dec"]), float(p["scale"])) == (150.5, 2.25, 0.296)
        assert p["width"] == p["height"] == "128"
        return httpx.Response(200, content=GREY, headers={"content-type": "image/jpeg"})

    async def go():
        async with client_for(handler) as sky:
            return (await sky.cutout(150.5, 2.25)).jpeg

    assert run(go()) == GREY


def test_500s_then_success():
    handler, calls = counting(
        [httpx.Response(500), httpx.Response(503), httpx.Response(200, content=GREY)]
    )

    async def go():
        async with client_for(handler, retries=3) as sky:
            return (await sky.cutout(150.0, 2.0)).jpeg

    assert run(go()) == GREY
    assert len(calls) == 3


def test_persistent_500_gives_up_after_retries():
    handler, calls = counting([httpx.Response(500, text="<h1>Internal Server Error</h1>")])

    async def go():
        async with client_for(handler, retries=3) as sky:
            await sky.cutout(150.0, 2.0)

    with pytest.raises(SkyServerUpstreamError) as info:
        run(go())
    assert len(calls) == 4
    assert info.value.reason == "HTTP 500 (4 attempts)"
    assert "Internal Server Error" in str(info.value)


def test_timeouts_are_retried():
    handler, calls = counting([5.0, 5.0, httpx.Response(200, content=GREY)])

    async def go():
        async with client_for(handler, retries=2, timeout=0.05) as sky:
            return (await sky.cutout(150.0, 2.0)).jpeg

    assert run(go()) == GREY
    assert len(calls) == 3


def test_persistent_timeout_is_a_timeout_error():
    handler, calls = counting([5.0])

    async def go():
        async with client_for(handler, retries=1, timeout=0.05) as sky:
            await sky.cutout(150.0, 2.0)

    with pytest.raises(SkyServerTimeout) as info:
        run(go())
    assert len(calls) == 2
    assert info.value.reason.startswith("timeout")


def test_connection_errors_are_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, content=GREY)

    async def go():
        async with client_for(handler, retries=2) as sky:
            return (await sky.cutout(150.0, 2.0)).jpeg

    assert run(go()) == GREY
    assert len(calls) == 2


@pytest.mark.parametrize("status", [400, 404])
def test_4xx_not_retried(status):
    handler, calls = counting([httpx.Response(status, text="Bad request")])

    async def go():
        async with client_for(handler, retries=3) as sky:
            await sky.cutout(150.0, 2.0)

    with pytest.raises(SkyServerUpstreamError) as info:
        run(go())
    assert len(calls) == 1
    assert info.value.reason == f"HTTP {status}"


def test_truncated_jpeg_is_retried():
    handler, calls = counting(
        [httpx.Response(200, content=GREY[: len(GREY) // 2]), httpx.Response(200, content=GREY)]
    )

    async def go():
        async with client_for(handler, retries=2) as sky:
            return (await sky.cutout(150.0, 2.0)).jpeg

    assert run(go()) == GREY
    assert len(calls) == 2


def test_garbage_body_fails_with_reason():
    handler, calls = counting([httpx.Response(200, text="<html>maintenance</html>")])

    async def go():
        async with client_for(handler, retries=1) as sky:
            await sky.cutout(150.0, 2.0)

    with pytest.raises(SkyServerUpstreamError) as info:
        run(go())
    assert info.value.reason == "not a JPEG (2 attempts)"


def test_bad_arguments_rejected_without_request():
    handler, calls = counting([httpx.Response(200, content=GREY)])

    async def go(**kwargs):
        async with client_for(handler) as sky:
            await sky.cutout(**kwargs)

    for kwargs in (
        {"ra": 360.0, "dec": 0.0},
        {"ra": 10.0, "dec": 91.0},
        {"ra": float("nan"), "dec": 0.0},
        {"ra": 1.0, "dec": 1.0, "width": 32},
    ):
        with pytest.raises(ValueError):
            run(go(**kwargs))
    assert calls == []


# --- politeness ------------------------------------------------------------------------


def test_rate_limit_spaces_requests():
    starts = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(time.monotonic())
        return httpx.Response(200, content=GREY)

    async def go():
        async with client_for(handler, rate=20.0, concurrency=10) as sky:
            await asyncio.gather(*(sky.cutout(150.0, 2.0 + i / 100) for i in range(10)))

    t0 = time.monotonic()
    run(go())
    assert len(starts) == 10
    assert time.monotonic() - t0 >= 0.44
    gaps = np.diff(sorted(starts))
    assert gaps.min() >= 0.04  # 1/20 s, less timer slack


def test_concurrency_limit_holds():
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, content=GREY)

    async def go():
        async with client_for(handler, concurrency=3) as sky:
            await asyncio.gather(*(sky.cutout(150.0, 2.0) for _ in range(20)))

    run(go())
    assert peak == 3


# --- JPEG checks and blank cutouts ------------------------------------------------------


def test_decode_jpeg_rejects_truncated_and_non_jpeg():
    assert decode_jpeg(GREY).shape == (128, 128, 3)
    for cut in (len(GREY) - 2, len(GREY) - 200, len(GREY) // 2, 300):
        with pytest.raises(ValueError):
            decode_jpeg(GREY[:cut])
    with pytest.raises(ValueError):
        decode_jpeg(b"GIF89a...")
    with pytest.raises(ValueError):
        decode_jpeg(GREY, (64, 64))


def test_blank_synthetic():
    black = np.zeros((128, 128, 3))
    assert is_blank(jpeg_bytes(black))
    assert is_blank(black)  # arrays too
    # Near-black with low-level noise and a stray bright pixel (JPEG rings it over its
    # 8 x 8 block) is still blank.
    near_black = np.random.default_rng(0).integers(0, 6, (128, 128, 3))
    near_black[10, 20] = 255
    assert is_blank(jpeg_bytes(near_black, quality=75))
    # A faint, PSF-sized source alone on pure black sky does.
    yy, xx = np.mgrid[:128, :128]
    blob = 40 * np.exp(-((xx - 64) ** 2 + (yy - 64) ** 2) / (2 * 1.5**2))
    assert not is_blank(jpeg_bytes(np.repeat(blob[..., None], 3, axis=-1)))


@pytest.fixture(scope="module")
def sky():
    from galmet.training.mocksky import MockSky

    return MockSky(300, seed=5)


def test_blank_off_footprint_mock_cutout(sky):
    from galmet.training.mock_population import FOOTPRINT

    ra_min, _, dec_min, _ = FOOTPRINT
    for ra, dec in ((ra_min - 20, 10.0), (ra_min + 10, dec_min - 5), (10.0, -30.0)):
        assert not sky.in_footprint(ra, dec)
        assert is_blank(sky.cutout_jpeg(ra, dec))


def test_faint_galaxies_and_empty_sky_are_not_blank(sky):
    cat = sky.catalog()
    r = np.asarray(cat["petroMag_r"])
    surface_brightness = r + 5 * np.log10(np.asarray(cat["petroR50_r"]))
    # The faintest and the most diffuse sample galaxies, on the mock's sky noise.
    for i in {*np.argsort(-r)[:3], *np.argsort(-surface_brightness)[:3]}:
        assert not is_blank(sky.cutout_jpeg(cat["ra"][i], cat["dec"][i]))
    # Sky with no sample galaxy in it is still imaging, not an off-footprint blank.
    assert not is_blank(sky.cutout_jpeg(200.0, 45.0))


def test_sql_error_reported_by_skyserver_is_not_retried():
    body = {
        "ErrorCode": 500,
        "ErrorType": "InternalServerError",
        "ErrorMessage": "no such column: foo",
    }
    handler, calls = counting([httpx.Response(500, json=body)])

    async def go():
        async with client_for(handler, retries=3) as sky:
            await sky.sql("SELECT foo FROM Galaxy")

    with pytest.raises(SkyServerUpstreamError) as info:
        run(go())
    assert len(calls) == 1
    assert str(info.value) == "SkyServer SQL search: HTTP 500: no such column: foo"


def test_sql_html_500_is_retried():
    handler, calls = counting(
        [
            httpx.Response(500, text="<h1>Internal Server Error</h1>"),
            httpx.Response(200, text="#Table1\nn\n3\n"),
        ]
    )

    async def go():
        async with client_for(handler, retries=3) as sky:
            return await sky.sql("SELECT COUNT(*) AS n FROM Galaxy")

    assert run(go())["n"][0] == 3
    assert len(calls) == 2


def test_sql_against_mock_skyserver(mock_skyserver):
    async def go(query):
        async with SkyServerClient(mock_skyserver, rate=None) as sky:
            return await sky.sql(query), sky.requests_sent

    table, _ = run(go("SELECT TOP 5 objID, ra, dec FROM Galaxy ORDER BY objID"))
    assert len(table) == 5 and table["objID"].dtype == np.int64 and table["ra"].dtype.kind == "f"
    assert list(table["objID"]) == sorted(table["objID"])
    with pytest.raises(SkyServerUpstreamError) as info:
        run(go("SELECT nonsense FROM Galaxy"))
    assert "nonsense" in str(info.value) and "\n" not in str(info.value)


def test_cutout_against_mock_skyserver(mock_skyserver, mock_sky):
    row = mock_sky.catalog()[0]

    async def go():
        async with SkyServerClient(mock_skyserver, rate=None) as sky:
            return (await sky.cutout(row["ra"], row["dec"], width=96, height=64)).jpeg

    data = run(go())
    assert decode_jpeg(data).shape == (64, 96, 3)
    assert data == mock_sky.cutout_jpeg(row["ra"], row["dec"], 0.296, 96, 64)
