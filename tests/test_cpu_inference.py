"""Inference on the CPU: bfloat16 where the CPU runs it natively and training checked that it
moves the model's predictions by less than half the 0.005 dex tolerance, and forward passes
of a bounded number of views (images × TTA copies) whatever the batch.

The speed itself is measured, side by side with the old path, by bench/infer_throughput.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galmet.model import Checkpoint
from galmet.predictor import (
    BF16_SAFE_DEX,
    BF16_TOLERANCE_DEX,
    CPU_VIEWS_PER_PASS,
    Predictor,
    bf16_deviation,
    default_bf16,
    native_bf16,
)
from galmet.training.config import TrainConfig
from galmet.training.dataset import GalaxyData, load_data, split_indices
from galmet.training.simulate import simulate
from galmet.training.train import train
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Checkpoint, GalaxyData]:
    """A model trained a few steps on 48 mock galaxies (64 px, trained at 32 px), and its data."""
    data = tmp_path_factory.mktemp("bf16-mock")
    simulate(48, data, seed=6, size=64, workers=1)
    out = data / "model.pt"
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        size=32,
        batch_size=8,
        frozen_epochs=1,
        cycles=1,
        tta=1,
        seed=3,
        max_steps=4,
    )
    train(cfg)
    return Checkpoint.load(out), load_data(data, ["oh_p50"], size=32, progress=False)


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16")
def test_training_measures_the_bf16_deviation_and_prediction_keeps_within_it(trained):
    ck, data = trained
    valid = split_indices(len(data), ck.split_seed)["valid"]
    check = ck.bf16_check
    assert check["split"] == "valid" and check["n"] == len(valid)
    images = data.images[torch.from_numpy(valid)]
    assert check["max_dex"] == pytest.approx(bf16_deviation(ck, images), abs=1e-6)
    # Whatever precision the default predictor picked, every galaxy of the mock (the test
    # split included) is within the tolerance of float32.
    exact = Predictor(ck, bf16=False)
    default = Predictor(ck)
    assert default.bf16 == (check["max_dex"] <= BF16_SAFE_DEX)
    for tta in (1, 8):
        diff = np.abs(default.predict_images(data.images, tta).mean - exact.predict_images(
            data.images, tta).mean)  # fmt: skip
        assert diff.max() <= BF16_TOLERANCE_DEX


def test_a_cpu_uses_bf16_only_for_a_model_checked_to_allow_it(monkeypatch):
    ck = tiny_checkpoint()
    assert not Predictor(ck).bf16  # never checked (trained before the check): float32
    assert Predictor(ck, bf16=True).bf16  # unless asked
    ck.bf16_check = {"max_dex": 0.02, "n": 100, "split": "valid"}
    assert not Predictor(ck).bf16  # bf16 moves this model too much
    ck.bf16_check = {"max_dex": 0.001, "n": 100, "split": "valid"}
    assert Predictor(ck).bf16 == native_bf16("cpu")
    assert default_bf16(ck, "cuda")  # as before on a GPU
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert not native_bf16("cpu") and native_bf16("cuda")
    assert not Predictor(ck).bf16  # emulated bf16 is slower than float32


def test_cpu_forward_passes_hold_a_bounded_number_of_views(monkeypatch):
    predictor = Predictor(tiny_checkpoint(), bf16=False)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    whole = [predictor.predict_images(images[i : i + 1], 8).mean for i in range(len(images))]
    net = predictor.nets[0]
    sizes: list[int] = []
    forward = net.forward_features

    def counting(x):
        sizes.append(len(x))
        return forward(x)

    monkeypatch.setattr(net, "forward_features", counting)
    pred = predictor.predict_images(images, 8, batch_size=256)
    assert max(sizes) <= CPU_VIEWS_PER_PASS and sum(sizes) == 8 * len(images)
    # Chunking changes nothing: the same numbers as one image at a time.
    assert np.allclose(pred.mean, np.concatenate(whole), atol=1e-5)
    sizes.clear()
    predictor.predict_images(images, 1, batch_size=4)
    assert sizes == [4, 4, 2]  # a smaller batch_size bounds the pass too
