"""The prediction service over real HTTP on loopback, against the mock SkyServer.

A tiny random-weight checkpoint stands in for a trained model (the numbers are not the
point here; the plumbing is). The database is SQLite, and PostgreSQL too when it answers.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from galmet.cli import main as galmet
from galmet.model import Checkpoint, file_sha256
from galmet.predictor import Predictor, fetch_geometry
from galmet.training.mock_skyserver import Faults, serve_in_thread
from galmet.training.mock_skyserver import create_app as create_mock
from tests.helpers import galaxy, offline_predictions, service

API = "/api/v1"


@pytest.fixture
def api(tiny_model, mock_skyserver, database_url, tmp_path) -> Iterator[str]:
    with service(tiny_model, mock_skyserver, database_url, tmp_path) as url:
        yield url


def mock_stats(skyserver: str) -> dict:
    return httpx.get(skyserver.rsplit("/", 1)[0] + "/mock/stats").json()


def jpeg_of(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------ by coordinates


def test_predict_by_coordinates_then_from_cache(api, mock_sky, mock_skyserver, tiny_model):
    ra, dec = galaxy(mock_sky, 3)
    before = mock_stats(mock_skyserver)["getjpeg"]
    first = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
    assert first.status_code == 200, first.text
    p = first.json()
    assert p["cached"] is False and p["source"] == "coordinates"
    assert 7 < p["oh_p50"] < 11 and p["oh_sigma"] > 0 and p["log_mstar"] is not None
    assert p["oh_p16"] == pytest.approx(p["oh_p50"] - p["oh_sigma"])
    assert p["model_version"] == file_sha256(tiny_model) and p["demo"] is False
    assert set(p["tta_spread"]) == {"oh_p50", "log_mstar"} and p["tta"] == 2
    assert mock_stats(mock_skyserver)["getjpeg"] == before + 1
    # Again, with 0.1" of jitter, and by POST: the cache answers, SkyServer is not asked.
    again = httpx.get(f"{api}{API}/predict", params={"ra": ra + 0.1 / 3600, "dec": dec})
    assert again.json()["cached"] is True and again.json()["oh_p50"] == p["oh_p50"]
    posted = httpx.post(f"{api}{API}/predict", json={"ra": ra, "dec": dec})
    assert posted.status_code == 200 and posted.json()["cached"] is True
    assert mock_stats(mock_skyserver)["getjpeg"] == before + 1
    # The cutout the page shows comes from the cache as well.
    cut = httpx.get(f"{api}{API}/cutout", params={"ra": ra, "dec": dec})
    assert cut.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(cut.content))
    assert mock_stats(mock_skyserver)["getjpeg"] == before + 1


def test_sexagesimal_coordinates(api, mock_sky):
    from astropy.coordinates import Angle

    ra, dec = galaxy(mock_sky, 5)
    ra_s = Angle(ra, unit="deg").to_string(unit="hourangle", sep=":", precision=4)
    dec_s = Angle(dec, unit="deg").to_string(unit="deg", sep=":", precision=3, alwayssign=True)
    r = httpx.post(f"{api}{API}/predict", json={"ra": ra_s, "dec": dec_s}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["ra"] == pytest.approx(ra, abs=1e-5)


def test_served_predictions_are_the_offline_predictors_on_the_same_bytes(
    tiny_model, mock_sky, mock_skyserver, tmp_path, capsys
):
    """One preprocessing path: what the service answers, by position (the cutout it fetches
    from SkyServer) and for uploads (at the trained size, and a PNG it must resize), is what
    ``Predictor`` gives on ``decode_image`` of the same bytes offline, and what
    ``galmet predict --json`` prints, to 1e-5 dex."""
    size, scale = fetch_geometry(Checkpoint.load(tiny_model))
    ra, dec = galaxy(mock_sky, 12)
    # The model's cutout at (ra, dec), as anyone gets it from SkyServer.
    params = {"ra": ra, "dec": dec, "scale": scale, "width": size, "height": size}
    fetched = httpx.get(f"{mock_skyserver}/SkyServerWS/ImgCutout/getjpeg", params=params)
    assert fetched.status_code == 200
    as_trained = mock_sky.cutout_jpeg(*galaxy(mock_sky, 13), 0.396, 64, 64)
    other_size = jpeg_of(mock_sky.render(*galaxy(mock_sky, 14), 0.3, 90, 90), "PNG")
    images = [fetched.content, as_trained, other_size]
    url = f"sqlite:///{tmp_path}/same.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp_path, tta=2) as api:
        by_position = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
        seen = httpx.get(f"{api}{API}/cutout", params={"ra": ra, "dec": dec}).content
        served = [
            by_position.json(),
            upload(api, as_trained).json(),
            upload(api, other_size, "c.png", "image/png").json(),
        ]
    assert seen == fetched.content, "the service predicted on the cutout SkyServer sent"
    assert [p["cached"] for p in served] == [False, False, False]
    assert served[2]["flags"] == ["resized"] and served[1]["flags"] == []

    files = [tmp_path / "trained.jpg", tmp_path / "other.png"]
    for path, data in zip(files, images[1:], strict=True):
        path.write_bytes(data)
    common = ["predict", "--model", str(tiny_model), "--tta", "2", "--json", "--device", "cpu"]
    by_coords = ["--ra", repr(ra), "--dec", repr(dec), "--skyserver", mock_skyserver]
    assert galmet([*common, *by_coords]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert galmet([*common, *map(str, files)]) == 0
    cli += json.loads(capsys.readouterr().out)

    offline = offline_predictions(tiny_model, images, tta=2)
    for k, (got, by_cli, want) in enumerate(zip(served, cli, offline, strict=True)):
        for key in ("oh_p50", "oh_sigma", "log_mstar", "log_mstar_sigma"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), (k, key)
            assert by_cli[key] == pytest.approx(want[key], abs=1e-5), (k, key)
        assert got["tta_spread"] == pytest.approx(want["tta_spread"], abs=1e-5), k
    # Not vacuous: another resampling of the same bytes (bicubic, not decode_image's bilinear)
    # moves the predictions by several times the tolerance. (A random ResNet's outputs vary
    # little from image to image, so this is the scale that matters, not 7 < O/H < 11.)
    predictor = Predictor(Checkpoint.load(tiny_model))
    bicubic = [
        np.asarray(
            Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
        )
        for data in images
    ]
    other = predictor.predict_arrays(bicubic, 2)
    shifts = [
        abs(o["outputs"][name] - w[field])
        for o, w in zip(other, offline, strict=True)
        for name, field in (("oh_p50", "oh_p50"), ("lgm_tot_p50", "log_mstar"))
    ]
    assert max(shifts) > 3e-5


def test_twenty_identical_requests_at_once_leave_one_row(api, mock_sky, database_url):
    ra, dec = galaxy(mock_sky, 8)

    def ask(_):
        return httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert all(a.status_code == 200 for a in answers)
    assert len({a.json()["oh_p50"] for a in answers}) == 1
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT ra, dec FROM predictions")).fetchall()
    engine.dispose()
    near = [r for r in rows if abs(r[0] - ra) < 1e-4 and abs(r[1] - dec) < 1e-4]
    assert len(near) == 1


def test_off_footprint_is_a_clear_422_and_the_service_goes_on(api, mock_sky):
    r = httpx.get(f"{api}{API}/predict", params={"ra": 20.0, "dec": -40.0}, timeout=60)
    assert r.status_code == 422
    assert "blank_cutout" in r.json()["flags"] and "footprint" in r.json()["detail"]
    ra, dec = galaxy(mock_sky, 1)
    assert httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}).status_code == 200


@pytest.mark.parametrize(
    "params, words",
    [
        ({"ra": 400, "dec": 0}, "ra must be in [0, 360)"),
        ({"ra": 360, "dec": 0}, "ra must be in [0, 360)"),
        ({"ra": 10, "dec": -91}, "dec must be in [-90, 90]"),
        ({"ra": "nan", "dec": 0}, "finite"),
        ({"ra": "inf", "dec": 0}, "finite"),
        ({"ra": "ten", "dec": 0}, "cannot read ra"),
        ({"ra": 10}, "dec"),
        ({"ra": "", "dec": "1"}, "empty"),
    ],
)
def test_bad_coordinates_get_a_4xx_with_one_line(api, params, words):
    r = httpx.get(f"{api}{API}/predict", params=params)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail


def test_bad_json_bodies(api):
    assert httpx.post(f"{api}{API}/predict", content=b"{not json").status_code == 422
    r = httpx.post(f"{api}{API}/predict", json={"ra": [1, 2], "dec": 3})
    assert r.status_code == 422 and "\n" not in r.json()["detail"]


def test_skyserver_failures_are_502_and_504(tiny_model, mock_sky, tmp_path):
    ra, dec = galaxy(mock_sky, 2)
    url = f"sqlite:///{tmp_path}/f.sqlite3"
    with (
        serve_in_thread(create_mock(mock_sky, Faults(fail_rate=1.0))) as failing,
        service(tiny_model, failing, url, tmp_path) as api,
    ):
        r = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
        assert r.status_code == 502 and "SkyServer" in r.json()["detail"]
    url = f"sqlite:///{tmp_path}/t.sqlite3"
    faults = Faults(timeout_rate=1.0, hang_seconds=5)
    with (
        serve_in_thread(create_mock(mock_sky, faults)) as hanging,
        service(tiny_model, hanging, url, tmp_path) as api,
    ):
        r = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
        assert r.status_code == 504 and "in time" in r.json()["detail"]
        assert httpx.get(f"{api}{API}/healthz").status_code == 200


# ------------------------------------------------------------------ uploads


def upload(api: str, data: bytes, name: str = "x.jpg", ctype: str = "image/jpeg"):
    return httpx.post(f"{api}{API}/predict/image", files={"file": (name, data, ctype)}, timeout=60)


def test_upload_predicts_and_caches_by_hash(api, mock_sky):
    data = mock_sky.cutout_jpeg(*galaxy(mock_sky, 4), 0.396, 64, 64)
    r = upload(api, data)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["source"] == "image" and p["cached"] is False and p["flags"] == []
    assert len(p["image_sha256"]) == 64
    again = upload(api, data)
    assert again.json()["cached"] is True and again.json()["oh_p50"] == p["oh_p50"]


def test_upload_conversions_are_flagged(api, mock_sky):
    rgb = mock_sky.render(*galaxy(mock_sky, 6), 0.396, 64, 64)
    gray = upload(api, jpeg_of(rgb, "PNG", "L"), "g.png", "image/png")
    assert gray.status_code == 200 and "grayscale_converted" in gray.json()["flags"]
    rgba = upload(api, jpeg_of(rgb, "PNG", "RGBA"), "a.png", "image/png")
    assert rgba.status_code == 200 and "converted_from_rgba" in rgba.json()["flags"]
    big = mock_sky.render(*galaxy(mock_sky, 6), 0.296, 100, 100)
    resized = upload(api, jpeg_of(big))
    assert resized.status_code == 200 and "resized" in resized.json()["flags"]


def decompression_bomb() -> bytes:
    """A valid 1-bit PNG of 20000 x 20000 black pixels in about 50 kilobytes."""
    width = height = 20_000

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        )

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    raw = zlib.compress(b"\x00" * ((width // 8 + 1) * height), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("text", 422, "not an image (no JPEG or PNG data)"),
        ("truncated", 422, "truncated"),
        ("empty", 422, "empty"),
        ("gif", 415, "only JPEG and PNG"),
        ("too_large", 413, "limit"),
        ("bomb", 413, "too many pixels"),
    ],
)
def test_bad_uploads_get_a_4xx_and_the_service_goes_on(api, mock_sky, case, status, words):
    good = mock_sky.cutout_jpeg(*galaxy(mock_sky, 7), 0.396, 64, 64)
    rgb = mock_sky.render(*galaxy(mock_sky, 7), 0.396, 64, 64)
    data = {
        "text": b"these are not the pixels you are looking for\n" * 10,
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "gif": jpeg_of(rgb, "GIF"),
        "too_large": np.random.default_rng(0).bytes(400_000),
        "bomb": decompression_bomb(),
    }[case]
    r = upload(api, data)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert "_io." not in r.json()["detail"]  # no Python internals in a user's error
    assert upload(api, good).status_code == 200


def test_a_5000_px_png_is_refused_by_its_pixels_not_its_bytes(
    tiny_model, mock_skyserver, tmp_path, mock_sky
):
    """25 Mpx: above galmet's 4096² limit, below the 2 × limit where Pillow itself raises
    (between the two Pillow only warns), in a file far under the upload cap of this service."""
    assert Image.MAX_IMAGE_PIXELS == 4096 * 4096  # set by galmet.images
    assert Image.MAX_IMAGE_PIXELS < 5000 * 5000 < 2 * Image.MAX_IMAGE_PIXELS
    pixels = np.zeros((5000, 5000, 3), np.uint8)  # mostly flat: the PNG compresses small
    pixels[2400:2600, 2400:2600] = np.random.default_rng(0).integers(0, 256, (200, 200, 3))
    data = jpeg_of(pixels, "PNG")
    cap = 50_000_000
    assert len(data) < cap
    url = f"sqlite:///{tmp_path}/big.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp_path, max_upload_bytes=cap) as api:
        r = upload(api, data, "big.png", "image/png")
        assert r.status_code == 413, r.text
        assert "too many pixels" in r.json()["detail"] and "limit" not in r.json()["detail"]
        good = mock_sky.cutout_jpeg(*galaxy(mock_sky, 7), 0.396, 64, 64)
        assert upload(api, good).status_code == 200


def test_upload_without_a_file_field(api):
    r = httpx.post(f"{api}{API}/predict/image", data={"other": "x"})
    assert r.status_code == 422 and "file" in r.json()["detail"]


# ------------------------------------------------------------------ model, health, docs


def test_models_health_ready_docs_and_page(api, tiny_model):
    m = httpx.get(f"{api}{API}/models").json()
    assert m["version"] == m["checkpoint_sha256"] == file_sha256(tiny_model)
    assert m["outputs"] == ["oh_p50", "lgm_tot_p50"] and m["demo"] is False
    assert m["input_size"] == 32 and m["pixel_scale"] == pytest.approx(0.396)
    assert httpx.get(f"{api}{API}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api}{API}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    docs = httpx.get(f"{api}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(f"{api}/openapi.json").json()
    assert {"/api/v1/predict", "/api/v1/predict/image", "/api/v1/models"} <= set(spec["paths"])
    page = httpx.get(f"{api}/")
    assert page.status_code == 200 and 'id="coords-form"' in page.text
    assert "Model tiny" in page.text


def test_without_a_model_the_service_trains_and_serves_the_demo_model(
    mock_sky, mock_skyserver, tmp_path
):
    tiny_demo = {"demo_galaxies": 60, "demo_size": 32, "demo_epochs": 1}
    db = f"sqlite:///{tmp_path}/demo.sqlite3"
    # tta=None: the CPU's default, the level the demo's test metrics were measured at.
    with service(None, mock_skyserver, db, tmp_path, tta=None, **tiny_demo) as api:
        m = httpx.get(f"{api}{API}/models").json()
        assert m["demo"] is True and "not for science" in m["notice"]
        assert m["name"] == "mock-sky demo" and m["input_size"] == 32
        # One identity: the file the service built is named by the version it reports.
        (built,) = tmp_path.glob("demo-*.pt")
        assert built.name == f"demo-{m['version'][:16]}.pt"
        # The metrics shown are those of the TTA served.
        assert m["tta"] == 4 and m["served_test_metrics"] is not None
        assert m["served_test_metrics"] == m["test_metrics"]["results"]["tta4"]
        ra, dec = galaxy(mock_sky, 11)
        p = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60).json()
        assert p["demo"] is True and "not for science" in p["notice"]
        assert p["model_version"] == m["version"] and p["tta"] == 4
        page = httpx.get(f"{api}/").text
        assert "Mock-sky demo model: trained on simulated galaxies, not for science" in page
        assert page.lower().count("demo model") == 1  # the badge says it once


def test_a_stopped_service_frees_its_model(tiny_model, mock_skyserver, mock_sky, tmp_path):
    """The app object can outlive its server (test harnesses, ASGI hosts keep references);
    its runtime (model, engine, pools) must not: 50 services once held 10 GB here."""
    import gc

    from galmet.app.runtime import Runtime

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Runtime) for o in gc.get_objects())

    before = alive()
    db = f"sqlite:///{tmp_path}/free.sqlite3"
    with service(tiny_model, mock_skyserver, db, tmp_path) as api:
        ra, dec = galaxy(mock_sky, 2)
        assert httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}).status_code == 200
        assert alive() == before + 1
    assert alive() == before
