"""The mock sky's metallicity distribution held against the real sample's (catalogue-level
draws, no image rendering), and older mock folders still rebuilding the sky they were
written with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from galmet.training.baseline import FEATURES, MIN_SAMPLES_LEAF
from galmet.training.dataset import split_indices
from galmet.training.mocksky import MockSky
from galmet.training.mocksky_reference import REAL_OH_QUANTILES, oh_distribution

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sky() -> MockSky:
    return MockSky(4000, seed=21)


def test_quantiles_spread_and_tail_match_the_real_sample(sky):
    dist = oh_distribution(sky.catalog()["oh_p50"])
    for q, real in REAL_OH_QUANTILES.items():
        assert abs(dist["quantiles"][q] - real) < 0.08, (q, dist["quantiles"][q], real)
    assert 0.17 < dist["std"] < 0.23
    # A long metal-poor tail: the 1-50 % span is much wider than the 50-99 % one.
    assert dist["skew"] < -0.6
    qs = dist["quantiles"]
    assert qs[50] - qs[1] > 2 * (qs[99] - qs[50])


def test_mass_distribution_stays_sdss_like(sky):
    mass = np.asarray(sky.catalog()["lgm_tot_p50"])
    p5, p50, p95 = np.percentile(mass, [5, 50, 95])
    assert 9.8 < p50 < 10.3
    assert 8.6 < p5 < 9.4 and 10.5 < p95 < 11.2


def test_forest_on_gri_explains_as_much_as_on_real_sdss(sky):
    """On real SDSS a forest on g, r, i reaches 0.65 x the spread; the oracle floor is well
    below it (room for a CNN)."""
    cat = sky.catalog()
    y = np.asarray(cat["oh_p50"], dtype=float)
    x = np.stack([np.asarray(cat[c], dtype=float) for c in FEATURES], axis=1)
    parts = split_indices(len(y), 0)
    train, test = parts["train"], parts["test"]
    forest = RandomForestRegressor(
        100, min_samples_leaf=MIN_SAMPLES_LEAF, random_state=0, n_jobs=2
    ).fit(x[train], y[train])
    rmse = float(np.sqrt(np.mean((forest.predict(x[test]) - y[test]) ** 2)))
    assert 0.55 < rmse / np.std(y[test]) < 0.8
    assert sky.oracle_floor() < 0.7 * rmse
    assert sky.metadata()["oracle_floor_rmse"] == sky.oracle_floor()


def test_older_mock_folder_rebuilds_its_own_sky(tmp_path):
    """A mock.json written before the population knobs existed rebuilds the sky its images
    were drawn from (values from that version of the code, objIDs and oh_p50)."""
    old_config = {
        "z_min": 0.005,
        "z_max": 0.25,
        "logm_min": 8.5,
        "logm_max": 11.5,
        "r_limit": 17.77,
        "sfms_scatter": 0.3,
        "size_scatter": 0.15,
        "fmr_slope": -0.1,
        "size_slope": -0.2,
        "bulge_slope": 0.1,
        "oh_hidden_scatter": 0.05,
        "oh_error_bright": 0.03,
        "oh_error_faint": 0.05,
        "psf_fwhm": 1.4,
    }
    (tmp_path / "mock.json").write_text(json.dumps({"n": 300, "seed": 4, "config": old_config}))
    cat = MockSky.from_dir(tmp_path).catalog()
    assert [int(cat["objID"][i]) for i in (0, 1, 299)] == [
        1237645876868473764,
        1237645876889072748,
        1237645882974855871,
    ]
    assert np.allclose(
        [cat["oh_p50"][i] for i in (0, 1, 299)],
        [9.007755920432205, 9.168290073816694, 9.062326337881865],
        rtol=0,
        atol=1e-9,
    )
    assert np.std(cat["oh_p50"]) == pytest.approx(0.13204687864887818, abs=1e-9)


def test_bench_prints_the_table_and_a_json_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "mock_baseline.py"), "--n", "600", "--trees", "20"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    assert any(line.split()[:2] == ["5", "%"] and "8.49" in line for line in out)
    figures = json.loads(out[-1])
    assert figures["n"] == 600
    assert list(figures["oh_quantiles"]) == [f"{q:g}" for q in REAL_OH_QUANTILES]
    assert 0.1 < figures["oh_std"] < 0.3 and figures["oh_skew"] < 0
    assert 0 < figures["oracle_floor_rmse"] < figures["rf_gri_rmse"]
    assert 0 < figures["rf_ratio"] < 1.2
