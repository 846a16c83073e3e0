"""`galmet baseline` end to end on a small simulated sky."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from galmet.cli import main as galmet
from galmet.training.dataset import select_rows, split_indices

TARGETS = ["oh_p50", "lgm_tot_p50"]


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Path:
    """300 mock galaxies with 64 px images (select_rows keeps only rows with an image)."""
    out = tmp_path_factory.mktemp("baseline") / "mock"
    args = ["simulate", "--n", "300", "--out", str(out), "--size", "64", "--workers", "1"]
    assert galmet(args) == 0
    return out


@pytest.fixture(scope="module")
def run(sky) -> Path:
    """The baseline with both targets, written to the default DATA/baseline."""
    args = ["baseline", "--data", str(sky), "--target", "oh_p50", "--target", "lgm_tot_p50"]
    assert galmet(args) == 0
    return sky / "baseline"


def test_metrics_file_has_the_shared_shape(sky, run):
    m = json.loads((run / "metrics.json").read_text())
    rows, _, _ = select_rows(sky, TARGETS)
    n_test = len(split_indices(len(rows), 0)["test"])
    assert m["kind"] == "random_forest"
    assert m["split"] == "test" and m["seed"] == 0
    assert m["n"] == n_test
    assert m["targets"] == TARGETS
    assert Path(m["data"]) == sky.resolve()
    assert list(m["results"]) == ["random_forest"]
    for t in TARGETS:
        s = m["results"]["random_forest"][t]
        assert s["n"] == n_test
        assert np.isfinite(s["rmse"]) and np.isfinite(s["nmad"]) and s["rmse"] > 0
        assert s["outlier_definition"] == "|pred - true| > 3 NMAD"
    assert m["n_train"] == len(split_indices(len(rows), 0)["train"])
    assert m["features"] == ["modelMag_g", "modelMag_r", "modelMag_i"]
    for key in ("oh_predicted", "mass_predicted", "both_predicted"):
        assert "ratio" in m["mmr"][key] and "ratio_err" in m["mmr"][key]


def test_forest_is_above_the_oracle_floor(run):
    m = json.loads((run / "metrics.json").read_text())
    floor = m["oracle_floor"]
    assert floor["n"] == m["n"]
    assert m["results"]["random_forest"]["oh_p50"]["rmse"] > floor["rmse"] > 0


def test_figures_and_predictions_written(sky, run):
    for name in ("prediction_oh_p50.png", "prediction_lgm_tot_p50.png", "mmr.png"):
        assert (run / name).stat().st_size > 5000, name
    with (run / "predictions.csv").open() as f:
        table = list(csv.DictReader(f))
    rows, y, _ = select_rows(sky, TARGETS)
    test = split_indices(len(rows), 0)["test"]
    assert [int(r["objID"]) for r in table] == [int(i) for i in rows["objID"][test]]
    assert list(table[0]) == [
        "objID",
        "oh_p50_true",
        "oh_p50_pred",
        "lgm_tot_p50_true",
        "lgm_tot_p50_pred",
    ]
    true = np.array([float(r["oh_p50_true"]) for r in table])
    assert np.allclose(true, y[test, 0], atol=1e-6)


def test_same_seed_same_numbers_and_other_split(sky, tmp_path, capsys):
    out = tmp_path / "valid"
    args = ["baseline", "--data", str(sky), "--out", str(out), "--split", "valid", "--trees", "20"]
    assert galmet(args) == 0
    printed = capsys.readouterr().out
    assert "oh_p50" in printed and str(out) in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "valid" and m["targets"] == ["oh_p50"] and m["trees"] == 20
    rows, _, _ = select_rows(sky, ["oh_p50"])
    assert m["n"] == len(split_indices(len(rows), 0)["valid"])
    assert "mmr" not in m and not (out / "mmr.png").exists()
    assert galmet(args) == 0
    again = json.loads((out / "metrics.json").read_text())["results"]["random_forest"]["oh_p50"]
    first = m["results"]["random_forest"]["oh_p50"]
    # Trees are summed in whatever order the threads finish: equal to rounding, not bit for bit.
    assert again["rmse"] == pytest.approx(first["rmse"], rel=1e-9)
    assert again["nmad"] == pytest.approx(first["nmad"], rel=1e-9)


def test_bad_target_is_one_line_exit_2(sky, tmp_path, capsys):
    args = ["baseline", "--data", str(sky), "--out", str(tmp_path / "o"), "--target", "oh_p99"]
    assert galmet(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("galmet: error: unknown target(s) oh_p99")
    assert "\n" not in err
    assert not (tmp_path / "o").exists()


def test_missing_data_folder_exit_2(tmp_path, capsys):
    assert galmet(["baseline", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"galmet: error: data folder {tmp_path / 'nowhere'} does not exist"
