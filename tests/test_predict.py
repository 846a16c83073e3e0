"""``galmet predict`` on image files and on coordinates served by the mock SkyServer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.coordinates import Angle

from galmet.app.predict import parse_dec, parse_ra
from galmet.cli import main as galmet
from galmet.errors import GalmetError
from galmet.model import Checkpoint, file_sha256
from galmet.predictor import Predictor, fetch_geometry
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mock_sky):
    """(model file, two galaxies' JPEG files, their catalog rows)."""
    root = tmp_path_factory.mktemp("predict")
    model = root / "model.pt"
    tiny_checkpoint(config={"size": 32}).save(model)
    rows = mock_sky.catalog()[:2]
    paths = []
    for row in rows:
        path = root / f"{row['objID']}.jpg"
        path.write_bytes(mock_sky.cutout_jpeg(float(row["ra"]), float(row["dec"])))
        paths.append(path)
    return model, paths, rows


def run_json(capsys, *args: str) -> list[dict]:
    assert galmet(["predict", *args, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_two_image_files_table(setup, capsys):
    model, paths, _ = setup
    assert galmet(["predict", "--model", str(model), *map(str, paths), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for path in paths:
        assert str(path) in out
    assert "oh_p50" in out and "log_mstar" in out and "±" in out
    assert file_sha256(model)[:12] in out
    # the table shows what --json and every results format give: 4 decimals in dex
    (first,) = run_json(capsys, "--model", str(model), str(paths[0]))
    line = next(x for x in out.splitlines() if x.startswith(str(paths[0])))
    assert f"{first['oh_p50']:.4f} ± {first['oh_sigma']:.4f}" in line


def test_json_has_the_prediction_fields(setup, capsys):
    model, paths, _ = setup
    recs = run_json(capsys, "--model", str(model), *map(str, paths), "--tta", "4")
    assert [r["source"] for r in recs] == [str(p) for p in paths]
    expected = Predictor(Checkpoint.load(model)).predict_bytes([p.read_bytes() for p in paths], 4)
    for i, r in enumerate(recs):
        assert r["model_version"] == file_sha256(model)
        assert r["tta"] == 4 and r["flags"] == []
        assert set(r["tta_spread"]) == {"oh_p50", "log_mstar"}
        for key in ("oh_p50", "oh_sigma", "log_mstar", "log_mstar_sigma"):
            assert math.isfinite(r[key])
        assert r["oh_sigma"] > 0
        assert np.allclose([r["oh_p50"], r["log_mstar"]], expected.mean[i])


def test_coordinates_decimal_and_sexagesimal(setup, mock_skyserver, capsys, monkeypatch):
    model, paths, rows = setup
    ra, dec = float(rows[0]["ra"]), float(rows[0]["dec"])
    by_deg = run_json(
        capsys,
        "--model",
        str(model),
        "--ra",
        str(ra),
        "--dec",
        str(dec),
        "--skyserver",
        mock_skyserver,
    )[0]
    assert by_deg["ra"] == pytest.approx(ra) and by_deg["dec"] == pytest.approx(dec)
    # The cutout fetched (128 px at 0.296"/px for a model trained on resized 128 px cutouts)
    # is the very image of the galaxy's file: the same prediction.
    by_file = run_json(capsys, "--model", str(model), str(paths[0]))[0]
    assert by_deg["oh_p50"] == pytest.approx(by_file["oh_p50"], abs=1e-6)

    ra_hms = Angle(ra, "deg").to_string(unit="hourangle", sep=":", precision=5)
    dec_dms = Angle(dec, "deg").to_string(unit="deg", sep=":", precision=4, alwayssign=True)
    monkeypatch.setenv("GALMET_SKYSERVER_URL", mock_skyserver)
    by_sex = run_json(capsys, "--model", str(model), "--ra", ra_hms, f"--dec={dec_dms}")[0]
    assert by_sex["ra"] == pytest.approx(ra, abs=1e-6)
    assert by_sex["dec"] == pytest.approx(dec, abs=1e-6)
    assert math.isfinite(by_sex["oh_p50"])


def test_off_footprint_is_refused(setup, mock_skyserver, capsys):
    model, _, _ = setup
    args = ["--ra", "10", "--dec=-30", "--skyserver", mock_skyserver, "--device", "cpu"]
    assert galmet(["predict", "--model", str(model), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "blank" in captured.err and "off the SDSS imaging footprint" in captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ra", "abc", "--dec", "10"], "cannot read RA"),
        (["--ra", "400", "--dec", "10"], "RA must be in [0, 360)"),
        (["--ra", "150", "--dec", "95"], "Dec must be in [-90, 90]"),
        (["--ra", "nan", "--dec", "10"], "finite"),
        (["--ra", "150"], "--ra and --dec go together"),
        ([], "nothing to predict"),
    ],
)
def test_bad_coordinates_are_user_errors(setup, capsys, args, message):
    model, _, _ = setup
    assert galmet(["predict", "--model", str(model), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unreadable_files_are_named(setup, tmp_path, capsys):
    model, paths, _ = setup
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(paths[0].read_bytes()[:500])
    for bad in (text, truncated, tmp_path / "missing.jpg"):
        assert galmet(["predict", "--model", str(model), str(paths[0]), str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and err.count("\n") == 1
    assert galmet(["predict", "--model", str(tmp_path / "nomodel.pt"), str(paths[0])]) == 2
    assert "no model file" in capsys.readouterr().err


def test_flags_for_images_unlike_the_training_cutouts(setup, tmp_path, capsys):
    from PIL import Image

    model, paths, _ = setup
    grey = tmp_path / "grey.png"
    Image.open(paths[0]).convert("L").resize((64, 64)).save(grey)
    rec = run_json(capsys, "--model", str(model), str(grey), "--tta", "1")[0]
    # The service's own upload flags (galmet.images.check_upload).
    assert rec["flags"] == ["grayscale_converted", "resized"]


def test_cutout_geometry():
    def ck(config: dict, input_size: int = 32) -> Checkpoint:
        return Checkpoint(["oh_p50"], [9.0], [0.1], input_size, "gri", [], config=config)

    # Trained on resized cutouts of unrecorded size: the design's 128 px at 0.296"/px.
    assert fetch_geometry(ck({"size": 32})) == (128, 0.296)
    # Images used as stored: their size is the input size.
    assert fetch_geometry(ck({"size": None}, input_size=96)) == (96, 0.296)
    # Recorded geometry wins; --scale wins over it.
    recorded = ck({"size": 32, "image_size": 64, "pixel_scale": 0.396})
    assert fetch_geometry(recorded) == (64, 0.396)
    assert fetch_geometry(recorded, 0.2) == (64, 0.2)
    # Below SkyServer's 64 px: the same field at 64 px.
    assert fetch_geometry(ck({}, input_size=32)) == (64, pytest.approx(0.148))


def test_parse_coordinates():
    assert parse_ra("150.25") == 150.25
    assert parse_ra("10:00:00") == pytest.approx(150.0)
    assert parse_ra("10h01m00s") == pytest.approx(150.25)
    assert parse_ra("150d") == pytest.approx(150.0)
    assert parse_dec("+02:30:00") == pytest.approx(2.5)
    assert parse_dec("-02:30:00") == pytest.approx(-2.5)
    assert parse_dec("-2.5") == -2.5
    with pytest.raises(GalmetError):
        parse_ra("25:00:00")
    with pytest.raises(GalmetError):
        parse_dec("inf")


def test_an_unreachable_skyserver_is_named_with_the_setting_to_change(
    tiny_model, capsys, monkeypatch
):
    import functools

    import galmet.app.predict as predict_cli

    # One quick try, not the client's patient retries: the message is what is tested.
    quick = functools.partial(predict_cli.SkyServerClient, retries=1, backoff=0.01)
    monkeypatch.setattr(predict_cli, "SkyServerClient", quick)
    where = ["--ra", "150.0", "--dec", "2.2"]
    args = ["predict", "--model", str(tiny_model), *where, "--device", "cpu"]
    assert galmet([*args, "--skyserver", "http://127.0.0.1:9/dr17"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "http://127.0.0.1:9/dr17" in err
    assert "--skyserver" in err and "GALMET_SKYSERVER_URL" in err
    monkeypatch.setenv("GALMET_SKYSERVER_URL", "http://127.0.0.1:9/dr16")
    assert galmet(args) == 2
    assert "SkyServer at http://127.0.0.1:9/dr16" in capsys.readouterr().err
