"""``galmet evaluate`` on a small mock with an untrained (but fixed) network, on the CPU."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from galmet.cli import main as galmet
from galmet.d4 import d4
from galmet.model import Checkpoint, GalmetNet, file_sha256
from galmet.preprocess import normalise
from galmet.training.dataset import load_data, select_rows, split_indices
from galmet.training.evaluate import evaluate
from galmet.training.simulate import simulate

TARGETS = ["oh_p50", "lgm_tot_p50"]


def make_checkpoint(data, targets=TARGETS, seed: int = 0) -> Checkpoint:
    """A checkpoint as ``galmet train --size 32`` would write it, without the training."""
    torch.manual_seed(seed)
    net = GalmetNet(len(targets))
    # Non-trivial BatchNorm statistics, so that eval mode is not the identity.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32))
    _, y, _ = select_rows(data, ["oh_p50", "lgm_tot_p50"])
    train = split_indices(len(y), 0)["train"]
    return Checkpoint(
        outputs=list(targets),
        target_mean=y[train].mean(axis=0).tolist()[: len(targets)],
        target_std=y[train].std(axis=0).tolist()[: len(targets)],
        input_size=32,
        bands="gri",
        model_states=[net.state_dict()],
        config={"data": str(data), "targets": list(targets), "size": 32, "limit": None},
        split_seed=0,
        data=str(data),
    )


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    """(data folder, model file): 60 mock galaxies at 64 px and a 32 px model."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    simulate(60, data, seed=3, size=64, workers=1)
    model = root / "models" / "model.pt"
    make_checkpoint(data).save(model)
    return data, model


def test_evaluate_writes_metrics_figures_and_predictions(mock, capsys):
    data, model = mock
    assert galmet(["evaluate", "--model", str(model), "--data", str(data), "--device", "cpu"]) == 0
    out = model.parent / "eval"
    n_test = len(split_indices(len(select_rows(data, TARGETS)[0]), 0)["test"])

    rec = json.loads((out / "metrics.json").read_text())
    assert rec["kind"] == "cnn" and rec["split"] == "test" and rec["seed"] == 0
    assert rec["n"] == n_test and rec["targets"] == TARGETS
    assert set(rec["results"]) == {"tta1", "tta8"}
    for per_target in rec["results"].values():
        for t in TARGETS:
            m = per_target[t]
            assert m["n"] == n_test
            for key in ("rmse", "nmad", "bias", "outlier_fraction", "calibration_1sigma"):
                assert math.isfinite(m[key])
    assert rec["model"]["version"] == file_sha256(model)
    assert rec["training"]["size"] == 32
    assert rec["oracle_floor"]["n"] == n_test  # simulate wrote truth.csv
    assert {"oh_predicted", "mass_predicted", "both_predicted"} <= set(rec["mmr"])

    for t in TARGETS:
        assert (out / f"prediction_{t}.png").stat().st_size > 0
        assert (out / f"calibration_{t}.png").stat().st_size > 0
    assert (out / "mmr.png").stat().st_size > 0

    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_test
    for t in TARGETS:
        assert {f"{t}_true", f"{t}_pred", f"{t}_sigma", f"{t}_tta_spread"} <= set(rows[0])

    printed = capsys.readouterr().out
    assert "tta8" in printed and "lgm_tot_p50" in printed and str(out) in printed


def test_tta8_is_the_mean_over_the_eight_d4_transforms(mock, tmp_path):
    data, model = mock
    ev = evaluate(model, data, out=tmp_path, device="cpu", batch_size=4)

    # Independently: the test rows, each of the 8 transforms through the network, averaged.
    ck = Checkpoint.load(model)
    full = load_data(data, ck.outputs, ck.input_size)
    rows = split_indices(len(full), ck.split_seed)["test"]
    assert np.array_equal(ev.objid, full.objid[rows])
    net = ck.models("cpu")[0]
    images = full.images[torch.from_numpy(rows)]
    with torch.inference_mode():
        outs = [net(normalise(d4(images, k)))[0].numpy() for k in range(8)]
    expected = np.mean(outs, axis=0) * np.asarray(ck.target_std) + np.asarray(ck.target_mean)

    assert np.allclose(ev.predictions["tta8"].mean, expected, atol=1e-5)
    assert not np.allclose(ev.predictions["tta1"].mean, expected, atol=1e-5)
    with (tmp_path / "predictions.csv").open() as f:
        written = np.array([float(r["oh_p50_pred"]) for r in csv.DictReader(f)])
    assert np.allclose(written, expected[:, 0], atol=1e-5)


def test_evaluate_other_split_and_tta(mock, tmp_path, capsys):
    data, model = mock
    args = ["--split", "valid", "--tta", "2", "--out", str(tmp_path), "--device", "cpu"]
    assert galmet(["evaluate", "--model", str(model), "--data", str(data), *args]) == 0
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert rec["split"] == "valid" and set(rec["results"]) == {"tta1", "tta2"}
    assert rec["n"] == len(split_indices(len(select_rows(data, TARGETS)[0]), 0)["valid"])


def test_evaluate_errors_are_one_line(mock, tmp_path, capsys):
    data, model = mock

    def run(model_path, data_path) -> str:
        args = ["evaluate", "--model", str(model_path), "--data", str(data_path)]
        assert galmet([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("galmet: error:")
        return err

    assert "no model file" in run(tmp_path / "missing.pt", data)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert "junk.pt" in run(junk, data)
    (tmp_path / "empty").mkdir()
    assert "no catalog.csv" in run(model, tmp_path / "empty")
    other = tmp_path / "other.pt"
    make_checkpoint(data, ["oh_p50", "sfr_xyz"]).save(other)
    assert "sfr_xyz" in run(other, data)


def test_evaluate_all_of_a_download_folder_with_its_catalog(mock, tmp_path, capsys):
    """A sample the model never saw, as `galmet download` leaves it (images/, and the
    catalog elsewhere): --split all --catalog FILE."""
    import shutil

    data, model = mock
    folder = tmp_path / "dl"
    shutil.copytree(data / "images", folder / "images")
    catalog = tmp_path / "sample.csv"
    shutil.copy(data / "catalog.csv", catalog)
    args = ["evaluate", "--model", str(model), "--data", str(folder), "--split", "all"]
    assert galmet([*args, "--catalog", str(catalog), "--out", str(tmp_path / "ev")]) == 0
    rec = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert rec["split"] == "all" and rec["n"] == len(select_rows(data, TARGETS)[0]) > 46
    assert rec["demo"] is False and rec["notice"] is None


def test_a_demo_models_evaluation_says_so(mock, tmp_path, capsys):
    from PIL import Image

    data, _ = mock
    ck = make_checkpoint(data)
    notice = "mock-sky demo model: trained on simulated galaxies, not for science"
    ck.config |= {"demo": True, "notice": notice}
    demo = tmp_path / "demo.pt"
    ck.save(demo)
    args = ["evaluate", "--model", str(demo), "--data", str(data), "--device", "cpu"]
    assert galmet([*args, "--out", str(tmp_path / "ev")]) == 0
    assert f"NOTE: {notice}" in capsys.readouterr().out
    rec = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert rec["demo"] is True and rec["notice"] == notice
    # The figure carries it: its foot differs from an ordinary model's figure.
    plain = tmp_path / "plain.pt"
    make_checkpoint(data).save(plain)
    assert galmet(["evaluate", "--model", str(plain), "--data", str(data), "--device", "cpu",
                   "--out", str(tmp_path / "ev2")]) == 0  # fmt: skip
    foot = [
        np.asarray(Image.open(tmp_path / ev / "prediction_oh_p50.png").convert("L"))[-12:]
        for ev in ("ev", "ev2")
    ]
    assert (foot[0] < 200).sum() > (foot[1] < 200).sum() + 50  # the notice's text


def test_a_cached_models_evaluation_goes_to_the_current_folder(mock, tmp_path, monkeypatch, capsys):
    import shutil

    data, model = mock
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "demo-0123456789abcdef.pt"
    shutil.copy(model, cached)
    monkeypatch.setenv("GALMET_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    assert galmet(["evaluate", "--model", str(cached), "--data", str(data), "--device", "cpu"]) == 0
    assert (tmp_path / "eval-demo-0123456789abcdef" / "metrics.json").is_file()
    assert not (cache / "eval").exists()
