"""Metrics against hand-computed values, the MMR scatter ratio, the metrics file, the figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from galmet.training.figures import plot_calibration, plot_loss_curve, plot_mmr, plot_prediction
from galmet.training.metrics import (
    bias,
    calibration,
    metrics_record,
    mmr_comparison,
    mmr_scatter_ratio,
    nmad,
    nmad_at_fixed_mass,
    outlier_fraction,
    rmse,
    summarise,
    write_metrics,
)


def test_rmse_nmad_bias_by_hand():
    res = np.array([1.0, -1.0, 2.0, -2.0, 0.0])
    # RMSE: sqrt((1 + 1 + 4 + 4 + 0) / 5) = sqrt(2).
    assert rmse(res) == pytest.approx(math.sqrt(2))
    # NMAD: median = 0; |res - 0| = [1, 1, 2, 2, 0], sorted [0, 1, 1, 2, 2], median 1 -> 1.4826.
    assert nmad(res) == pytest.approx(1.4826)
    assert bias(res) == 0.0
    # [0, 0, 1, 5]: median (0 + 1) / 2 = 0.5 (the mean, 1.5, is pulled by the 5).
    assert bias([0, 0, 1, 5]) == 0.5
    # [3, 4, 8]: median 4; |d - 4| = [1, 0, 4], median 1 -> NMAD 1.4826; the offset is irrelevant.
    assert nmad([3, 4, 8]) == pytest.approx(1.4826)
    assert nmad(np.array([3, 4, 8]) + 100) == pytest.approx(1.4826)


def test_outlier_fraction_constructed():
    res = [0.1, -0.1, 0.2, -0.2, 0.0, 10.0]
    # median 0.05; |d - 0.05| sorted [0.05, 0.05, 0.15, 0.15, 0.25, 9.95] -> median 0.15,
    # NMAD = 1.4826 * 0.15 = 0.2224, 3 NMAD = 0.667: only the 10 is out -> 1/6.
    assert nmad(res) == pytest.approx(1.4826 * 0.15)
    assert outlier_fraction(res) == pytest.approx(1 / 6)
    # With k = 0.5 (0.111), the two +-0.2 are out as well -> 3/6.
    assert outlier_fraction(res, k=0.5) == pytest.approx(3 / 6)


def test_calibration_is_exactly_point_six():
    # |res| <= sigma for 0.5, 0.5 and 1.0 (the edge counts as inside); not for 2 and 3 -> 3/5.
    assert calibration([0.5, -0.5, 1.0, -2.0, 3.0], 1.0) == 0.6
    assert calibration([0.5, -0.5, 1.0, -2.0, 3.0], [1, 1, 1, 1, 1]) == 0.6
    # Per-galaxy sigma: the 3 is inside its sigma of 4, the 0.5 outside its 0.1 -> still 3/5.
    assert calibration([0.5, -0.5, 1.0, -2.0, 3.0], [0.1, 1, 1, 1, 4]) == 0.6


def test_summarise_shape_and_values():
    true = np.array([8.0, 8.5, 9.0, 9.5, 10.0])
    pred = true + np.array([1.0, -1.0, 2.0, -2.0, 0.0])
    s = summarise(pred, true)
    assert set(s) == {
        "n",
        "rmse",
        "nmad",
        "bias",
        "mean_bias",
        "outlier_fraction",
        "outlier_definition",
    }
    assert s["n"] == 5
    assert s["rmse"] == pytest.approx(math.sqrt(2))
    assert s["nmad"] == pytest.approx(1.4826)
    assert s["outlier_definition"] == "|pred - true| > 3 NMAD"
    assert summarise(pred, true, sigma=1.5)["calibration_1sigma"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        summarise([1, 2], [1, 2, 3])


def _mmr_sample(n: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    mass = rng.uniform(9.0, 11.0, n)
    relation = 8.0 + 0.3 * (mass - 9.0)
    return rng, mass, relation


def test_nmad_at_fixed_mass_recovers_the_scatter():
    rng, mass, relation = _mmr_sample()
    oh = relation + rng.normal(0, 0.1, mass.size)
    bins = np.arange(9.0, 11.01, 0.1)
    # Narrow bins: the slope adds only 0.3 * 0.1 / sqrt(12) = 0.009 dex in quadrature.
    assert nmad_at_fixed_mass(mass, oh, bins) == pytest.approx(0.1, abs=0.01)
    # Across all masses the relation itself adds scatter.
    assert nmad(oh) > 0.15


def test_mmr_scatter_ratio_identical_and_tighter():
    rng, mass, relation = _mmr_sample()
    oh = relation + rng.normal(0, 0.1, mass.size)
    same = mmr_scatter_ratio(mass, oh, mass, oh, n_boot=50)
    assert same["ratio"] == 1.0 and same["ratio_err"] == 0.0
    tight = relation + rng.normal(0, 0.05, mass.size)
    r = mmr_scatter_ratio(mass, oh, mass, tight, n_boot=50)
    assert r["ratio"] == pytest.approx(0.5, abs=0.05)
    assert 0 < r["ratio_err"] < 0.05
    assert r["nmad_alt"] < r["nmad_ref"]


def test_mmr_comparison_has_the_three_relations():
    rng, mass, relation = _mmr_sample(2000)
    oh = relation + rng.normal(0, 0.1, mass.size)
    out = mmr_comparison(mass, oh, mass + rng.normal(0, 0.2, mass.size), relation)
    assert {"oh_predicted", "mass_predicted", "both_predicted"} <= set(out)
    # The noiseless relation keeps only its slope across a 0.25 dex bin (about 0.025 dex of
    # NMAD against 0.1): far tighter.
    assert out["oh_predicted"]["ratio"] < 0.4
    assert all(np.isfinite(out[k]["ratio"]) for k in ("mass_predicted", "both_predicted"))


def test_write_metrics_round_trips_numpy_and_nan(tmp_path):
    s = summarise(np.array([1.0, 2.0, 3.0]), np.array([1.1, 2.0, 2.7]))
    rec = metrics_record(
        "cnn",
        tmp_path,
        "test",
        np.int64(3),
        np.int64(3),
        ["oh_p50"],
        {"tta8": {"oh_p50": s}},
        extra=np.float32(np.nan),
        arr=np.arange(2),
    )
    path = write_metrics(tmp_path / "m" / "metrics.json", rec)
    back = json.loads(path.read_text())
    assert back["kind"] == "cnn" and back["seed"] == 3 and back["extra"] is None
    assert back["arr"] == [0, 1]
    assert back["results"]["tta8"]["oh_p50"]["rmse"] == pytest.approx(s["rmse"])
    with pytest.raises(ValueError):
        metrics_record("svm", tmp_path, "test", 0, 1, [], {})


def _check_png(path) -> None:
    assert path.exists() and path.stat().st_size > 5000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
    assert 400 <= w <= 2000 and 300 <= h <= 2000


@pytest.mark.parametrize("n", [40, 3000])  # points for a small sample, hexagons for a large one
def test_plot_prediction_writes_png(tmp_path, n):
    rng = np.random.default_rng(n)
    true = rng.normal(8.9, 0.15, n)
    pred = 0.6 * true + 0.4 * 8.9 + rng.normal(0, 0.08, n)
    _check_png(plot_prediction(true, pred, tmp_path / "pred.png", title="test"))


def test_plot_mmr_loss_and_calibration_write_pngs(tmp_path):
    rng, mass, relation = _mmr_sample(1500)
    oh = relation + rng.normal(0, 0.1, mass.size)
    _check_png(
        plot_mmr(mass, oh, mass + rng.normal(0, 0.1, mass.size), relation, tmp_path / "m.png")
    )
    history = [
        {"epoch": e, "train_loss": 1 / e, "valid_loss": 1.2 / e, "lr": 0.1 / e} for e in range(1, 9)
    ]
    _check_png(plot_loss_curve(history, tmp_path / "loss.png"))
    no_lr = [{"epoch": 1, "train_loss": 1.0, "valid_loss": None}, {"epoch": 2, "train_loss": 0.5}]
    _check_png(plot_loss_curve(no_lr, tmp_path / "loss2.png"))
    res = rng.normal(0, 0.1, 500)
    _check_png(plot_calibration(res, np.full(500, 0.1), tmp_path / "cal.png"))
