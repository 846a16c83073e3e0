"""``galmet submit FILE --wait``: the terminal client of batch jobs, against a real service."""

from __future__ import annotations

import pytest
from astropy.io.votable import parse_single_table

from galmet.cli import main
from tests.helpers import service
from tests.test_jobs import read_csv, targets_csv


@pytest.fixture
def api(tiny_model, mock_skyserver, tmp_path):
    url = f"sqlite:///{tmp_path}/submit.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp_path, skyserver_rate=0) as base:
        yield base


def test_submit_waits_with_a_progress_bar_and_saves_the_results(api, mock_sky, tmp_path, capsys):
    text, rows = targets_csv(mock_sky, 30)
    targets = tmp_path / "targets.csv"
    targets.write_text(text)
    assert main(["submit", str(targets), "--server", api, "--wait", "--poll", "0.2"]) == 0
    out, err = capsys.readouterr()
    assert "33 targets (3 invalid rows)" in out and "done: 30 predicted, 0 failed, 3 invalid" in out
    assert "galmet job" in err and "33/33" in err  # the progress bar reached the end
    saved = read_csv((tmp_path / "targets.galmet.csv").read_text())
    assert [r["id"] for r in saved] == [r["id"] for r in rows]
    assert sum(r["status"] == "done" for r in saved) == 30

    out_file = tmp_path / "out.vot"
    args = ["submit", str(targets), "--server", api, "--wait", "--format", "votable"]
    assert main([*args, "--out", str(out_file)]) == 0
    assert len(parse_single_table(str(out_file)).to_table()) == 33


def test_submit_without_wait_prints_the_job(api, mock_sky, tmp_path, capsys):
    targets = tmp_path / "t.csv"
    targets.write_text(targets_csv(mock_sky, 3, bad=False)[0])
    assert main(["submit", str(targets), "--server", api]) == 0
    assert "/api/v1/jobs/" in capsys.readouterr().out


def test_submit_takes_its_server_from_galmet_url(api, mock_sky, tmp_path, capsys, monkeypatch):
    targets = tmp_path / "t.csv"
    targets.write_text(targets_csv(mock_sky, 2, bad=False)[0])
    monkeypatch.setenv("GALMET_URL", api + "/")
    assert main(["submit", str(targets)]) == 0
    assert f"{api}/api/v1/jobs/" in capsys.readouterr().out
    # --server wins over the environment
    monkeypatch.setenv("GALMET_URL", "http://127.0.0.1:9")
    assert main(["submit", str(targets), "--server", api]) == 0
    assert main(["submit", str(targets)]) == 2
    assert "cannot reach the galmet service at http://127.0.0.1:9" in capsys.readouterr().err


def test_submit_errors_are_one_line(api, tmp_path, capsys):
    assert main(["submit", str(tmp_path / "missing.csv"), "--server", api]) == 2
    assert "no such file" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["submit", str(empty), "--server", api]) == 2
    err = capsys.readouterr().err
    assert "422" in err and "no targets" in err and len(err.strip().splitlines()) == 1
    empty.write_text("ra,dec\n1,1\n")
    assert main(["submit", str(empty), "--server", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the galmet service" in capsys.readouterr().err
