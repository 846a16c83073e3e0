"""The mock sky: determinism, columns, physics, rendering, and `galmet simulate`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from astropy.table import Table
from PIL import Image
from sklearn.ensemble import RandomForestRegressor

from galmet.cli import main as galmet
from galmet.training import sample
from galmet.training.mock_population import FOOTPRINT, tremonti_mmr
from galmet.training.mocksky import MockSky
from galmet.training.sample import CATALOG_COLUMNS, MISSING


@pytest.fixture(scope="module")
def big_sky() -> MockSky:
    """Enough galaxies for statistics; no images are rendered, so this is quick."""
    return MockSky(4000, seed=11)


def test_same_seed_same_sky_and_pixels():
    a, b = MockSky(200, seed=5), MockSky(200, seed=5)
    for name in a.population.colnames:
        assert np.array_equal(a.population[name], b.population[name]), name
    ra, dec = float(a.catalog()["ra"][0]), float(a.catalog()["dec"][0])
    assert a.cutout_jpeg(ra, dec) == b.cutout_jpeg(ra, dec)
    c = MockSky(200, seed=6)
    assert not np.array_equal(a.catalog()["oh_p50"], c.catalog()["oh_p50"])


def test_catalog_has_the_sdss_columns_and_only_sample_rows(big_sky):
    cat = big_sky.catalog()
    assert cat.colnames == CATALOG_COLUMNS
    assert len(cat) == 4000
    assert np.all(cat["oh_p50"] != MISSING)
    assert np.all(np.diff(cat["objID"]) > 0), "objIDs are unique and ordered"
    # The population also holds the objects the catalog query must cut.
    rejects = big_sky.population[~big_sky.in_sample]
    assert len(rejects) > 1000
    assert np.any(rejects["oh_p50"] == MISSING)
    assert np.any(rejects["rChi2"] >= 2)
    assert np.any((rejects["zErr"] <= 0) | (rejects["zErr"] >= 0.01))
    assert np.any(rejects["modelMag_u"] == MISSING)
    assert np.any(rejects["z"] <= 0.02)
    assert np.array_equal(sample.mask(big_sky.population), big_sky.in_sample)


def test_magnitude_limit_and_ranges(big_sky):
    pop = big_sky.population
    assert np.all(pop["petroMag_r"] < big_sky.config.r_limit)
    cat = big_sky.catalog()
    assert np.min(cat["z"]) > 0.02 and np.max(cat["z"]) < 0.25
    assert (
        np.percentile(cat["lgm_tot_p50"], 1) > 8.3 and np.percentile(cat["lgm_tot_p50"], 99) < 11.7
    )
    assert np.all(cat["oh_p16"] < cat["oh_p50"]) and np.all(cat["oh_p50"] < cat["oh_p84"])
    ra0, ra1, dec0, dec1 = FOOTPRINT
    assert np.all((cat["ra"] >= ra0) & (cat["ra"] <= ra1))
    assert np.all((cat["dec"] >= dec0) & (cat["dec"] <= dec1))


def test_mass_metallicity_relation_rises_with_mass(big_sky):
    cat = big_sky.catalog()
    x, oh = np.asarray(cat["lgm_tot_p50"]), np.asarray(cat["oh_p50"])
    low = (x > 9.0) & (x < 10.3)
    slope = np.polyfit(x[low], oh[low], 1)[0]
    # Tremonti's slope at log M = 9.6 is 0.31; noise in mass flattens it a little.
    assert 0.15 < slope < 0.4


def test_scatter_and_oracle_floor_match_configuration(big_sky):
    cfg = big_sky.config
    s = big_sky.population[big_sky.in_sample]
    # The hidden scatter is what no image shows: measured about the true latent mean.
    hidden = np.asarray(s["true_oh"] - s["true_oh_mean"])
    assert abs(np.std(hidden) - cfg.oh_hidden_scatter) < 0.005
    err = np.asarray(s["oh_p50"] - s["true_oh"])
    assert abs(np.std(err) - np.sqrt(np.mean(np.asarray(s["true_oh_err"]) ** 2))) < 0.004
    assert abs(big_sky.oracle_floor() - big_sky.expected_oracle_floor()) < 0.004
    # Scatter at fixed (true) mass: the ~0.07 dex of real massive galaxies, wider in dwarfs
    # (Tremonti et al. 2004), where the SFR term is stronger and the main sequence broader.
    logm = np.asarray(s["true_logm"])
    offset = np.asarray(s["true_oh"]) - tremonti_mmr(logm)
    massive, dwarf = np.std(offset[logm > 10.5]), np.std(offset[logm < 9.5])
    assert 0.05 < massive < 0.085
    assert massive + 0.02 < dwarf < 0.16


def test_image_information_beyond_gri_magnitudes(big_sky):
    """Sizes and redshift (which the image shows) predict metallicity better than g, r, i."""
    cat = big_sky.catalog()
    y = np.asarray(cat["oh_p50"])
    gri = np.c_[cat["modelMag_g"], cat["modelMag_r"], cat["modelMag_i"]]
    more = np.c_[gri, cat["petroR50_r"], cat["petroR90_r"], cat["z"]]
    train, test = slice(0, 3000), slice(3000, None)

    def rmse(x: np.ndarray) -> float:
        rf = RandomForestRegressor(100, min_samples_leaf=5, random_state=0, n_jobs=2)
        rf.fit(x[train], y[train])
        return float(np.sqrt(np.mean((rf.predict(x[test]) - y[test]) ** 2)))

    rmse_gri, rmse_more = rmse(gri), rmse(more)
    assert rmse_more < rmse_gri - 0.01
    assert rmse_gri > 1.3 * big_sky.oracle_floor()


def test_render_galaxy_at_centre_and_black_off_footprint():
    sky = MockSky(50, seed=2)
    row = sky.catalog()[0]
    img = sky.render(row["ra"], row["dec"])
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    centre = img[60:68, 60:68].astype(float).mean()
    corner = img[:16, :16].astype(float).mean()
    assert centre > corner + 20
    off = sky.render(10.0, -30.0, width=64, height=96)
    assert off.shape == (96, 64, 3) and off.max() == 0
    # Half on, half off the footprint edge at Dec 0: the southern half is black.
    edge = sky.render(180.0, 0.0, scale=0.4, width=100, height=100)
    assert edge[60:].max() == 0 and edge[:40].max() > 0


def test_simulate_writes_catalog_images_truth_and_floor(tmp_path):
    out = tmp_path / "mock"
    assert (
        galmet(
            [
                "simulate",
                "--n",
                "40",
                "--out",
                str(out),
                "--seed",
                "3",
                "--size",
                "64",
                "--scale",
                "0.4",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    cat = Table.read(out / "catalog.csv", format="ascii.csv")
    assert cat.colnames == CATALOG_COLUMNS and len(cat) == 40
    truth = Table.read(out / "truth.csv", format="ascii.csv")
    assert np.array_equal(truth["objID"], cat["objID"])
    assert {"true_logm", "true_oh_mean", "true_re_disk", "true_bt"} <= set(truth.colnames)
    meta = json.loads((out / "mock.json").read_text())
    assert meta["n"] == 40 and meta["seed"] == 3 and 0.03 < meta["oracle_floor_rmse"] < 0.12
    assert meta["image_size"] == 64 and meta["pixel_scale"] == 0.4
    files = sorted((out / "images").iterdir())
    assert len(files) == 40 and not list((out / "images").glob("*.tmp"))
    sky = MockSky.from_dir(out)
    row = cat[7]
    data = (out / "images" / f"{row['objID']}.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    # The file is exactly what the mock SkyServer would serve for that position.
    assert data == sky.cutout_jpeg(float(row["ra"]), float(row["dec"]), 0.4, 64, 64)


def test_simulate_rejects_bad_options(tmp_path, capsys):
    assert galmet(["simulate", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert galmet(["simulate", "--n", "5", "--out", str(tmp_path), "--size", "20"]) == 2
    assert "between 64 and 2048" in capsys.readouterr().err


def test_field_objects_stay_put_whatever_the_cutout_centre(mock_sky):
    """Field galaxies and stars are fixed on the sky: found from two centres 1′ apart, the
    objects they share have the same positions (they used to move by arcminutes with the
    centre's declination, so a catalogued star was not where its own cutout drew it)."""
    row = mock_sky.catalog()[0]
    ra, dec = float(row["ra"]), float(row["dec"])

    def objects(d):
        return {(kind, round(r, 9), round(dd, 9)) for kind, r, dd, *_ in
                mock_sky.field_objects(ra, d, 0.05)}  # fmt: skip

    here, there = objects(dec), objects(dec + 1 / 60)
    near = {o for o in here if abs(o[2] - dec) < 0.02}
    assert near and near <= there
