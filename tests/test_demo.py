"""The mock-sky demo model: built once, cached by its settings, marked as a demo."""

from __future__ import annotations

import time

import pytest

from galmet.app.core.config import Settings
from galmet.app.demo import DEMO_NOTICE, demo_checkpoint, demo_index, demo_path, is_demo
from galmet.model import Checkpoint, file_sha256
from galmet.predictor import Predictor


@pytest.fixture
def tiny(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path, demo_galaxies=60, demo_size=32, demo_epochs=1, device="cpu")


def test_builds_once_and_caches(tiny, tmp_path):
    assert demo_path(tiny) is None
    path = demo_checkpoint(tiny, progress=False)
    assert path == demo_path(tiny) and path.parent == tmp_path
    # One identity: the file is named by the model version (its SHA-256) the service reports.
    assert path.name == f"demo-{file_sha256(path)[:16]}.pt"
    ck = Checkpoint.load(path)
    assert is_demo(ck) and is_demo(path)
    assert ck.config["notice"] == DEMO_NOTICE
    assert ck.input_size == 32 and ck.outputs == ["oh_p50"]
    assert ck.config["image_size"] == 128 and ck.config["pixel_scale"] == 0.296
    assert ck.sigma_scale  # calibrated
    assert Predictor(ck).predict_bytes([_jpeg()], tta=2).mean.shape == (1, 1)
    # Only the model is left behind: no build folder, no half-written file.
    index = demo_index(tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, index.name, index.with_suffix(".lock").name]
    )

    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert demo_checkpoint(tiny, progress=False) == path
    assert time.perf_counter() - start < 0.5  # cached: no retraining
    assert path.stat().st_mtime_ns == mtime


def test_settings_change_the_file(tiny):
    paths = {demo_index(tiny)}
    for change in ({"demo_galaxies": 61}, {"demo_size": 48}, {"demo_epochs": 2}):
        paths.add(demo_index(tiny.model_copy(update=change)))
    assert len(paths) == 4
    # Only the demo settings count.
    assert demo_index(tiny.model_copy(update={"batch_size": 3})) == demo_index(tiny)


def test_other_checkpoints_are_not_demos():
    ck = Checkpoint(["oh_p50"], [9.0], [0.1], 32, "gri", [], config={"size": 32})
    assert not is_demo(ck)


def _jpeg() -> bytes:
    import numpy as np

    from galmet.training.mock_render import encode_jpeg

    return encode_jpeg(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
