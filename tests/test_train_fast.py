"""The fast paths of training and inference, on the CPU (CUDA-only checks skip without a GPU).

D4 as one gather, normalisation constants made once, the learning-rate rule for large
batches, the speed flags from the command line to the checkpoint, a training loop that
reads nothing back from the device per batch, torch.compile, and batched decoding.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch
from PIL import Image

from galmet.d4 import d4, random_d4
from galmet.errors import GalmetError
from galmet.images import decode_image
from galmet.model import Checkpoint
from galmet.predictor import Predictor
from galmet.preprocess import decode_batch, gpu_decodable, normalise
from galmet.training.config import TrainConfig
from galmet.training.dataset import TargetScaler, load_data, split_indices
from galmet.training.simulate import simulate
from galmet.training.train import add_arguments, train
from galmet.training.trainer import (
    Trainer,
    make_optimizer,
    make_scheduler,
    resolve_flag,
    stage_images,
)
from tests.helpers import tiny_checkpoint

# Skips without a GPU; fails instead under GALMET_REQUIRE_CUDA=1 (tests/conftest.py).
cuda_only = pytest.mark.usefixtures("cuda_gpu")


@pytest.fixture(scope="module")
def tiny_mock(tmp_path_factory):
    """64 mock galaxies with 64 px images (trained at 32 px)."""
    out = tmp_path_factory.mktemp("mock64")
    simulate(64, out, seed=4, size=64, workers=1)
    return out


def encoded(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format=fmt)
    return buf.getvalue()


def some_images() -> list[bytes]:
    """JPEGs of two sizes, a grayscale JPEG, a PNG and an RGBA PNG."""
    rng = np.random.default_rng(0)
    rgb = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (48, 48, 40, 32)]
    return [
        encoded(rgb[0]),
        encoded(rgb[1]),
        encoded(rgb[2]),
        encoded(rgb[0], mode="L"),
        encoded(rgb[3], fmt="PNG"),
        encoded(rgb[3], fmt="PNG", mode="RGBA"),
    ]


# ------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_d4_is_one_gather_of_the_drawn_transforms(dtype):
    x = torch.randint(0, 256, (64, 3, 8, 8)).to(dtype)
    out = random_d4(x, torch.Generator().manual_seed(3))
    ks = torch.randint(0, 8, (64,), generator=torch.Generator().manual_seed(3))
    expected = torch.stack([d4(x[i], int(k)) for i, k in enumerate(ks)])
    assert out.dtype == dtype and torch.equal(out, expected)
    assert set(ks.tolist()) == set(range(8)), "a batch of 64 sees every transform"
    with pytest.raises(ValueError, match="square"):
        random_d4(torch.zeros(2, 3, 8, 6))


def test_normalise_constants_work_in_and_out_of_inference_mode():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    with torch.inference_mode():
        inside = normalise(x, mean=[0.5, 0.4, 0.3], std=(0.2, 0.2, 0.25))
    outside = normalise(x, mean=(0.5, 0.4, 0.3), std=[0.2, 0.2, 0.25])
    m = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    s = torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    assert torch.equal(inside, outside) and torch.equal(outside, (x / 255.0 - m) / s)
    w = torch.ones(1, requires_grad=True)
    (normalise(x) * w).sum().backward()  # constants made under inference_mode still train
    assert w.grad is not None


# ------------------------------------------------------------------ configuration


def test_lr_scale_rules_relative_to_the_reference_batch():
    def cfg(**kw) -> TrainConfig:
        return TrainConfig(data="", out="", lr=0.01, **kw)

    assert cfg(batch_size=256).head_lr() == pytest.approx(0.01)
    assert cfg(batch_size=256, lr_scale="linear").head_lr() == pytest.approx(0.04)
    assert cfg(batch_size=256, lr_scale="sqrt").head_lr() == pytest.approx(0.02)
    assert cfg(batch_size=32, lr_scale="linear", lr_reference_batch=16).head_lr() == 0.02
    with pytest.raises(GalmetError, match="--lr-scale"):
        cfg(lr_scale="cubic").head_lr()


def test_speed_flags_parse_into_the_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--data", "d", "--out", "m.pt"]

    def config(*extra: str) -> TrainConfig:
        values = {
            k: v for k, v in vars(parser.parse_args([*base, *extra])).items() if v is not None
        }
        return TrainConfig(**values)

    default = config()
    assert (default.bf16, default.channels_last, default.compile) == (None, None, False)
    assert (default.data_on_device, default.lr_scale, default.lr_reference_batch) == (
        "auto",
        "none",
        64,
    )
    fast = config(
        "--bf16",
        "--no-channels-last",
        "--compile",
        "--compile-backend",
        "eager",
        "--data-on-device",
        "no",
        "--lr-scale",
        "linear",
        "--batch-size",
        "512",
    )
    assert (fast.bf16, fast.channels_last, fast.compile, fast.compile_backend) == (
        True,
        False,
        True,
        "eager",
    )
    assert fast.data_on_device == "no" and fast.head_lr() == pytest.approx(0.01 * 512 / 64)


def test_speed_flags_default_to_cuda_only_and_the_cpu_keeps_its_images():
    cpu = torch.device("cpu")
    assert resolve_flag(None, cpu) is False and resolve_flag(True, cpu) is True
    assert resolve_flag(None, torch.device("cuda")) is True
    assert resolve_flag(False, torch.device("cuda")) is False
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    for mode in ("auto", "yes", "no"):
        assert stage_images(images, cpu, mode) is images
    with pytest.raises(GalmetError, match="--data-on-device"):
        stage_images(images, cpu, "sometimes")


# --------------------------------------------------------------------- training loop


def small_trainer(tiny_mock, **kw) -> Trainer:
    data = load_data(tiny_mock, ["oh_p50"], size=32, progress=False)
    split = split_indices(len(data))
    scaler = TargetScaler.fit(["oh_p50"], data.targets[split["train"]])
    cfg = TrainConfig(data=str(tiny_mock), out="", size=32, batch_size=4, **kw)
    return Trainer(cfg, data, scaler, split["train"], split["valid"], torch.device("cpu"))


def test_the_training_loop_reads_nothing_back_per_batch(tiny_mock, monkeypatch):
    """Reads from the device (.item(), .cpu(), bool(t) …) wait for a GPU to finish its
    queue; they may happen once per epoch, not once per batch: counted at 2 and 6 steps."""
    trainer = small_trainer(tiny_mock)
    calls = {"n": 0}
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            calls["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = []
    for steps in (2, 6):
        trainer.steps_per_epoch = steps
        opt = make_optimizer(trainer.model.layer_groups(), [0.001] * 3, trainer.cfg, trainer.device)
        sched = make_scheduler(opt, steps, 1, 1, 1)
        trainer.best = None  # both epochs copy the best state (one .cpu() per tensor)
        calls["n"] = 0
        trainer.run_epoch(0, opt, sched, "unfrozen")
        counts.append(calls["n"])
    assert counts[0] == counts[1], f"reads grow with the number of batches: {counts}"


def test_compile_wraps_the_model_but_not_its_state_dict(tiny_mock):
    trainer = small_trainer(tiny_mock, compile=True, compile_backend="eager")
    forward = trainer.forward_module()
    assert forward is not trainer.model and forward._orig_mod is trainer.model
    assert not any(k.startswith("_orig_mod") for k in trainer.model.state_dict())


def test_a_run_with_every_fast_path_on_the_cpu(tiny_mock, tmp_path):
    """bf16 autocast, channels_last, torch.compile (the eager backend: tracing without the
    minutes of C++ code generation inductor takes on this CPU) and a linearly scaled lr."""
    out = tmp_path / "fast.pt"
    cfg = TrainConfig(
        data=str(tiny_mock),
        out=str(out),
        size=32,
        batch_size=8,
        lr=0.01,
        lr_scale="linear",
        frozen_epochs=1,
        cycles=1,
        max_steps=2,
        tta=1,
        bf16=True,
        channels_last=True,
        compile=True,
        compile_backend="eager",
        data_on_device="yes",
    )
    train(cfg)
    ck = Checkpoint.load(out)
    c = ck.config
    assert (c["bf16"], c["channels_last"], c["compile"], c["lr_scale"]) == (
        True,
        True,
        True,
        "linear",
    )
    assert c["lr_effective"] == pytest.approx(0.01 * 8 / 64) and c["world_size"] == 1
    assert [h["epoch"] for h in ck.history] == [1, 2]
    assert ck.history[0]["lr"] <= c["lr_effective"] + 1e-12
    assert all(np.isfinite(h["train_loss"]) for h in ck.history)
    pred = Predictor(ck).predict_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert np.all(np.isfinite(pred.mean))


@cuda_only
@pytest.mark.parametrize("on_device", ["yes", "no"])
def test_cuda_epoch_with_images_on_the_gpu_or_pinned_on_the_host(tiny_mock, on_device):
    data = load_data(tiny_mock, ["oh_p50"], size=32, progress=False)
    device = torch.device("cuda")
    data.images = stage_images(data.images, device, on_device)
    split = split_indices(len(data))
    scaler = TargetScaler.fit(["oh_p50"], data.targets[split["train"]])
    cfg = TrainConfig(data=str(tiny_mock), out="", size=32, batch_size=8, max_steps=3)
    trainer = Trainer(cfg, data, scaler, split["train"], split["valid"], device)
    assert trainer.images_on_device == (on_device == "yes")
    assert trainer.bf16 and trainer.channels_last
    opt = make_optimizer(trainer.model.layer_groups(), [0.001] * 3, cfg, device)
    record = trainer.run_epoch(0, opt, make_scheduler(opt, 3, 1, 1, 1), "unfrozen")
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["valid_loss"])


# ------------------------------------------------------------------------- decoding


def test_decode_batch_on_the_cpu_is_decode_image_per_image():
    data = some_images()
    batch = decode_batch(data, 32, "cpu")
    expected = np.stack([decode_image(d, 32) for d in data])
    assert batch.device.type == "cpu" and batch.dtype == torch.uint8
    assert batch.shape == (len(data), 32, 32, 3) and np.array_equal(batch.numpy(), expected)
    with pytest.raises(ValueError, match="not an image"):
        decode_batch([data[0], b"\xff\xd8\xff not really"], 32, "cpu")


def test_only_complete_rgb_or_grey_jpegs_go_to_the_gpu_decoder():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    jpeg = encoded(rgb)
    assert gpu_decodable(jpeg) and gpu_decodable(encoded(rgb, mode="L"))
    assert not gpu_decodable(encoded(rgb, fmt="PNG"))
    assert not gpu_decodable(encoded(rgb, mode="CMYK"))
    assert not gpu_decodable(jpeg[: len(jpeg) // 2]), "truncated"
    assert not gpu_decodable(b"\xff\xd8\xff" + b"\x00" * 64 + b"\xff\xd9")
    assert not gpu_decodable(b"")


def test_predict_bytes_on_the_cpu_is_unchanged():
    predictor = Predictor(tiny_checkpoint())
    data = some_images()
    before = predictor.predict_images(
        torch.from_numpy(np.stack([decode_image(d, 32) for d in data])), tta=2
    )
    after = predictor.predict_bytes(data, tta=2)
    assert np.array_equal(before.mean, after.mean) and np.array_equal(before.sigma, after.sigma)


@cuda_only
def test_decode_batch_on_cuda_is_close_to_the_cpu_path():
    data = some_images() + [b"\xff\xd8\xff" + b"\x00" * 64 + b"\xff\xd9"]
    with pytest.raises(ValueError, match="not an image"):
        decode_batch(data, 32, "cuda")
    data = data[:-1]
    gpu = decode_batch(data, 32, "cuda")
    cpu = decode_batch(data, 32, "cpu")
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape and gpu.dtype == torch.uint8
    diff = (gpu.cpu().int() - cpu.int()).abs()
    # nvJPEG's IDCT and torchvision's antialiased resize differ from libjpeg and Pillow by
    # a few grey levels; PNGs take the CPU path and are identical.
    assert diff.float().mean() < 2.0 and diff.max() <= 24
    assert torch.equal(gpu[4:].cpu(), cpu[4:])
