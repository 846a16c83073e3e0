"""`galmet resolution` on a tiny mock: a model per size, the table, the figure, and a rerun
that trains nothing already trained."""

from __future__ import annotations

import csv
import math
import shutil

import pytest

from galmet.cli import main as galmet
from galmet.training import train as train_module
from galmet.training.simulate import simulate

TINY = ["--batch-size", "8", "--cycles", "1", "--max-steps", "1", "--tta", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("resolution") / "mock"
    simulate(40, out, seed=5, size=64, workers=1)
    return out


@pytest.fixture(scope="module")
def study(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    args = ["resolution", "--data", str(data), "--sizes", "16", "8", "--out", str(out), *TINY]
    assert galmet(args) == 0
    return out, args


def read_table(out) -> list[dict]:
    with (out / "resolution.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_row_per_size_with_finite_scores_and_the_figure(study, capsys):
    out, _ = study
    rows = read_table(out)
    assert [int(r["size"]) for r in rows] == [16, 8]
    for r in rows:
        assert int(r["n_test"]) > 0
        for key in ("rmse", "nmad", "rmse_tta1", "nmad_tta1", "oracle_floor_rmse"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, key
    # The paper's real-SDSS value where it has one (16 px), blank where not (8 px).
    assert float(rows[0]["paper_rmse"]) == 0.1043 and rows[1]["paper_rmse"] == ""
    assert (out / "resolution.png").stat().st_size > 10_000
    for size in (16, 8):
        assert (out / f"{size}px" / "model.pt").exists()
        assert (out / f"{size}px" / "eval" / "metrics.json").exists()


def test_rerun_skips_finished_sizes_and_evaluates_a_trained_one(study, monkeypatch, capsys):
    out, args = study
    before = read_table(out)

    def no_training(cfg):
        raise AssertionError(f"trained {cfg.size} px again")

    monkeypatch.setattr(train_module, "train", no_training)
    capsys.readouterr()
    assert galmet(args) == 0
    assert read_table(out) == before
    assert "done before" in capsys.readouterr().err
    # A size trained but not yet evaluated (killed in between) is only evaluated.
    shutil.rmtree(out / "8px" / "eval")
    assert galmet(args) == 0
    assert read_table(out) == before


def test_other_settings_or_bad_sizes_are_refused(study, data, capsys):
    out, args = study
    assert galmet([*args, "--batch-size", "16"]) == 2  # the last --batch-size wins
    assert "different batch_size" in capsys.readouterr().err
    base = ["resolution", "--data", str(data), "--out", str(out / "other"), *TINY]
    assert galmet([*base, "--sizes", "128"]) == 2
    assert "at most the stored images' 64 px" in capsys.readouterr().err
    assert galmet([*base, "--sizes", "4"]) == 2
    assert "at least 8" in capsys.readouterr().err
