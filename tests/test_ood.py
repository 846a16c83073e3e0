"""The out-of-distribution score: statistics of the head's input stored by training, a score
and a flag on every prediction, and checkpoints from before it still working.

The detection rates on the mock sky (held-out galaxies, stars, noise, wrong pixel scale,
swapped colours) are a measurement, in bench/ood.py; here a model trained a few steps on a
tiny mock must already score its held-out galaxies below pure-noise frames.
"""

from __future__ import annotations

import csv
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch
from astropy.io.votable import parse_single_table

from galmet.image_stats import image_statistics
from galmet.model import Checkpoint
from galmet.predictor import Predictor, ood_scores
from galmet.preprocess import normalise
from galmet.record import OOD_FLAG, public_fields, record_flags
from galmet.training.config import TrainConfig
from galmet.training.dataset import load_data, split_indices
from galmet.training.ood import OOD_QUANTILE, feature_statistics
from galmet.training.simulate import simulate
from galmet.training.train import train
from tests.helpers import galaxy, service, tiny_checkpoint

API = "/api/v1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained a few steps on 64 mock galaxies (64 px images, trained at 32 px)."""
    data = tmp_path_factory.mktemp("ood-mock")
    simulate(64, data, seed=5, size=64, workers=1)
    out = data / "model.pt"
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        size=32,
        batch_size=8,
        frozen_epochs=1,
        cycles=1,
        tta=1,
        seed=2,
        max_steps=3,  # a few steps: enough for the features to tell galaxies from noise
    )
    train(cfg)
    return data, out


def test_the_score_is_a_whitened_distance_about_one_for_the_training_set():
    rng = np.random.default_rng(0)
    scales = np.linspace(0.1, 10, 16)  # features of very different spreads
    train = rng.normal(3.0, 1.0, (4000, 16)) * scales
    stats = feature_statistics(train)
    assert stats["mean"].dtype == stats["precision"].dtype == torch.float32
    inside = ood_scores(torch.from_numpy(rng.normal(3.0, 1.0, (500, 16)) * scales), **stats)
    assert 0.9 < float(inside.mean()) < 1.1
    # Two standard deviations off in every feature is a score of about 2, whatever the scale.
    off = torch.from_numpy((3.0 + 2.0 * np.ones((1, 16))) * scales)
    assert float(ood_scores(off, **stats)[0]) == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="two"):
        feature_statistics(train[:1])


def test_training_stores_the_statistics_and_a_validation_threshold(trained):
    _, out = trained
    ck = Checkpoint.load(out)
    (member,) = ck.ood["members"]
    assert member["mean"].shape == (1024,) and member["precision"].shape == (1024, 1024)
    assert ck.ood["image"]["mean"].shape == (18,)  # colours, concentration, light, sky
    assert set(ck.ood["threshold"]) == {1, 2, 4, 8}
    assert ck.ood["quantile"] == OOD_QUANTILE == 0.99
    assert ck.ood["n_train"] > ck.ood["n_valid"] > 0


def test_held_out_galaxies_score_below_noise_and_the_threshold_flags(trained):
    data_dir, out = trained
    predictor = Predictor.from_file(out)
    data = load_data(data_dir, ["oh_p50"], 32, None, progress=False)
    split = split_indices(len(data), 0)
    held_out = data.images[torch.from_numpy(split["test"])]
    # The threshold is the 99th percentile of validation's scores: about 1% flagged there.
    valid = predictor.predict_images(data.images[torch.from_numpy(split["valid"])], 2)
    # The score's two parts each flag validation's top 1 %: of ten, at most one each.
    assert np.mean(valid.ood_score > predictor.ood_threshold(2)) <= 0.2
    galaxies = predictor.predict_images(held_out, 2).ood_score
    noise = torch.randint(0, 256, (len(held_out), 3, 32, 32), dtype=torch.uint8)
    frames = predictor.predict_images(noise, 2).ood_score
    assert galaxies.shape == frames.shape == (len(held_out),)
    assert np.median(frames) > 2 * np.median(galaxies)

    # The record carries the score and the flag; the flag follows the threshold.
    images = [img.permute(1, 2, 0).numpy() for img in (held_out[0], noise[0])]
    gal, frame = predictor.predict_arrays(images, tta=2)
    assert gal["ood_score"] == pytest.approx(float(galaxies[0]), rel=1e-4)
    assert frame["out_of_distribution"] is True and record_flags(frame) == [OOD_FLAG]
    predictor.checkpoint.ood["threshold"] = {2: 1e9}
    predictor.checkpoint.ood["image"]["threshold"] = 1e9  # the pixel part's, to match
    assert predictor.predict_arrays(images, tta=2)[1]["out_of_distribution"] is False
    # The nearest calibrated level's threshold serves a level without its own.
    predictor.checkpoint.ood["threshold"] = {1: 0.0}
    assert all(r["out_of_distribution"] for r in predictor.predict_arrays(images, tta=8))


def test_the_pixel_statistics_catch_swapped_colours(trained, tmp_path):
    data_dir, out = trained
    predictor = Predictor.from_file(out)
    data = load_data(data_dir, ["oh_p50"], 32, None, progress=False)
    rows = torch.from_numpy(split_indices(len(data), 0)["test"])
    held_out = data.images[rows]
    swapped = held_out[:, [2, 1, 0]]  # g <-> i: SDSS JPEGs hold i, r, g as R, G, B
    ck = predictor.checkpoint

    def pixels(images: torch.Tensor) -> np.ndarray:
        x = normalise(images, ck.bands, ck.input_mean, ck.input_std)
        stats = image_statistics(x, ck.input_mean, ck.input_std)
        image = ck.ood["image"]
        return ood_scores(stats, image["mean"], image["precision"]).numpy()

    # Swapped colours are farther from the training galaxies in pixel statistics (a red
    # galaxy swapped can pass for a blue one: its colour gradient, bulge bluer than disc,
    # gives it away; bench/ood.py measures the rate on a real-sized sample)...
    assert np.median(pixels(swapped)) > 1.5 * np.median(pixels(held_out))
    # ...and the score a prediction carries is the larger of the two parts, the pixel part
    # scaled so that the two validation thresholds coincide.
    pred = predictor.predict_images(swapped, 2)
    assert pred.ood_pixels == pytest.approx(pixels(swapped), rel=1e-5)
    threshold, pixel_threshold = predictor.ood_threshold(2), ck.ood["image"]["threshold"]
    assert pixel_threshold > 0 and threshold > 0
    scaled = pred.ood_pixels * threshold / pixel_threshold
    assert pred.ood_score == pytest.approx(np.maximum(pred.ood_features, scaled), rel=1e-5)
    both = pred.ood_score

    # A checkpoint scored before the pixel statistics existed keeps its feature-only score.
    raw = torch.load(out, weights_only=False)
    del raw["ood"]["image"]
    older = tmp_path / "features-only.pt"
    torch.save(raw, older)
    features_only = Predictor.from_file(older).predict_images(swapped, 2).ood_score
    assert np.all(features_only <= both + 1e-4)
    assert np.any(features_only < both - 1e-3)


def test_a_checkpoint_without_the_statistics_predicts_without_a_score(trained, tmp_path):
    _, out = trained
    raw = torch.load(out, weights_only=False)
    del raw["ood"]
    old = tmp_path / "old.pt"
    torch.save(raw, old)
    predictor = Predictor.from_file(old)
    image = np.zeros((32, 32, 3), np.uint8)
    (record,) = predictor.predict_arrays([image], tta=2)
    assert record["ood_score"] is None and record["out_of_distribution"] is False
    assert predictor.ood_threshold(2) is None and record_flags(record) == []
    fields = public_fields(record["outputs"], record["sigma"], record["tta_spread"], None)
    assert fields["ood_score"] is None and 7 < fields["oh_p50"] < 11
    assert public_fields({"oh_p50": 9.0}, {"oh_p50": 0.1}, None, 1.23456)["ood_score"] == 1.235


def test_galmet_predict_shows_the_score(trained, tmp_path, capsys):
    from galmet.cli import main as galmet

    data_dir, out = trained
    image = next((data_dir / "images").glob("*.jpg"))
    assert galmet(["predict", "--model", str(out), str(image), "--json", "--tta", "1"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["ood_score"] > 0
    assert (OOD_FLAG in rec["flags"]) == (
        rec["ood_score"] > Checkpoint.load(out).ood["threshold"][1]
    )
    assert galmet(["predict", "--model", str(out), str(image), "--tta", "1"]) == 0
    assert "ood" in capsys.readouterr().out.splitlines()[0]


@pytest.fixture(scope="module")
def scored_model(tmp_path_factory):
    """The tests' tiny random model with OOD statistics fitted on random images and a
    threshold that flags nothing a galaxy cutout would reach (a real one is in ``trained``)."""
    ck = tiny_checkpoint(
        config={"image_size": 64, "pixel_scale": 0.396},
        sigma_scale={1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0},
    )
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    (features,) = Predictor(ck).pooled_features(images)
    ck.ood = {"members": [feature_statistics(features)], "threshold": {1: 1e6}}
    path = tmp_path_factory.mktemp("scored") / "scored.pt"
    ck.save(path)
    return path


def test_the_api_and_job_results_carry_the_score(scored_model, mock_sky, mock_skyserver, tmp_path):
    db = f"sqlite:///{tmp_path}/ood.sqlite3"
    with service(scored_model, mock_skyserver, db, tmp_path) as api:
        ra, dec = galaxy(mock_sky, 2)
        p = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60).json()
        assert p["ood_score"] > 0 and OOD_FLAG not in p["flags"]
        cached = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}).json()
        assert cached["cached"] is True and cached["ood_score"] == p["ood_score"]

        r = httpx.post(f"{api}{API}/jobs", json=[{"ra": ra, "dec": dec, "id": "a"}], timeout=60)
        assert r.status_code == 202, r.text
        base = f"{api}{API}/jobs/{r.json()['id']}"
        for _ in range(600):
            if httpx.get(base, timeout=30).json()["status"] == "done":
                break
            time.sleep(0.1)
        (row,) = httpx.get(f"{base}/results", timeout=30).json()
        assert row["ood_score"] == p["ood_score"]
        text = httpx.get(f"{base}/results?format=csv").text  # '#' lines name the model
        (line,) = csv.DictReader(x for x in text.splitlines() if not x.startswith("#"))
        assert float(line["ood_score"]) == p["ood_score"]
        vot = parse_single_table(io.BytesIO(httpx.get(f"{base}/results?format=votable").content))
        assert float(vot.to_table()["ood_score"][0]) == pytest.approx(p["ood_score"])
