"""``galmet predict --targets``: a batch job without a server, through the jobs' own path."""

from __future__ import annotations

import json

import httpx
import pytest

from galmet.cli import main
from tests.helpers import service
from tests.test_jobs import read_csv, submit, targets_csv, wait

API = "/api/v1"


@pytest.fixture
def env(monkeypatch, tmp_path, mock_skyserver):
    monkeypatch.setenv("GALMET_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("GALMET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GALMET_SKYSERVER_URL", mock_skyserver)
    monkeypatch.delenv("GALMET_TTA", raising=False)
    return monkeypatch


def test_a_target_list_runs_in_process_like_a_job(
    env, tmp_path, capsys, mock_sky, mock_skyserver, tiny_model
):
    text, _ = targets_csv(mock_sky, 20)  # 20 galaxies and 3 bad rows
    targets = tmp_path / "targets.csv"
    targets.write_text(text)
    args = ["predict", "--model", str(tiny_model), "--targets", str(targets), "--tta", "2"]
    assert main([*args, "--device", "cpu"]) == 0
    err_out = capsys.readouterr()
    assert "20 predicted, 0 failed, 3 invalid" in err_out.out and "TTA 2" in err_out.out
    got = read_csv((tmp_path / "targets.galmet.csv").read_text())
    assert len(got) == 23 and sum(r["status"] == "invalid" for r in got) == 3
    # The same answers as the service's own job on the same list and model.
    db = f"sqlite:///{tmp_path / 'api.sqlite3'}"
    with service(tiny_model, mock_skyserver, db, tmp_path / "api") as api:
        job = submit(api, text).json()
        wait(api, job["id"])
        served = read_csv(httpx.get(f"{api}{API}/jobs/{job['id']}/results?format=csv").text)
    assert [r["status"] for r in got] == [r["status"] for r in served]
    for mine, theirs in zip(got, served, strict=True):
        if mine["status"] == "done":
            assert float(mine["oh_p50"]) == pytest.approx(float(theirs["oh_p50"]), abs=1e-9)
            assert mine["objID"] == theirs["objID"]
        else:
            assert mine["reason"] == theirs["reason"]
    # Run again: every answer comes from the database's cache.
    assert main([*args, "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert all(r["cached"] for r in again if r["status"] == "done")


def test_a_bad_target_list_is_one_line(env, tmp_path, capsys, tiny_model):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,x\na,1\n")
    assert main(["predict", "--model", str(tiny_model), "--targets", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.csv" in err and "ra" in err


def test_the_cli_uses_the_services_tta(env, tmp_path, capsys, mock_sky, tiny_model):
    from galmet.training.mock_render import encode_jpeg

    image = tmp_path / "g.jpg"
    ra, dec = float(mock_sky.catalog()[0]["ra"]), float(mock_sky.catalog()[0]["dec"])
    image.write_bytes(encode_jpeg(mock_sky.render(ra, dec, 0.396, 64, 64)))
    assert main(["predict", "--model", str(tiny_model), str(image), "--device", "cpu"]) == 0
    assert "(TTA 4;" in capsys.readouterr().out  # the CPU's default, as galmet serve
    env.setenv("GALMET_TTA", "2")
    assert main(["predict", "--model", str(tiny_model), str(image), "--json"]) == 0
    assert '"tta": 2' in capsys.readouterr().out


def test_targets_galmet_csv_names_the_demo_model(env, tmp_path, capsys, mock_sky, demo_model):
    from astropy.io.votable import parse

    from galmet.app.demo import DEMO_NOTICE
    from galmet.model import file_sha256

    text, _ = targets_csv(mock_sky, 3, bad=False)
    targets = tmp_path / "targets.csv"
    targets.write_text(text)
    version = file_sha256(demo_model)
    args = ["predict", "--model", str(demo_model), "--targets", str(targets), "--tta", "2"]
    assert main(args) == 0
    written = (tmp_path / "targets.galmet.csv").read_text()
    header = [line for line in written.splitlines() if line.startswith("#")]
    assert header[1:] == [f"# model_version: {version}", "# tta: 2", f"# notice: {DEMO_NOTICE}"]
    assert [r["id"] for r in read_csv(written)] == ["g0", "g1", "g2"]
    assert main([*args, "--out", str(tmp_path / "t.json")]) == 0
    for row in json.loads((tmp_path / "t.json").read_text()):
        assert (row["model_version"], row["tta"], row["notice"]) == (version, 2, DEMO_NOTICE)
    assert main([*args, "--out", str(tmp_path / "t.vot")]) == 0
    table = parse(str(tmp_path / "t.vot")).get_first_table()
    params = {p.name: p.value for p in table.params}
    assert params["notice"] == DEMO_NOTICE and params["model_version"] == version
    assert int(params["tta"]) == 2
    assert main([*args, "--out", str(tmp_path / "t.fits")]) == 0
    from astropy.io import fits

    with fits.open(tmp_path / "t.fits") as hdus:
        header, rows = hdus[1].header, hdus[1].data
        assert (header["MODELVER"], header["TTA"], header["NOTICE"]) == (version, 2, DEMO_NOTICE)
        assert [r["id"] for r in rows] == ["g0", "g1", "g2"]
