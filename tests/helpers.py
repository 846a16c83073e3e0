"""Helpers for the service tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from galmet.images import decode_image
from galmet.model import Checkpoint, GalmetNet
from galmet.predictor import Predictor, fetch_geometry
from galmet.record import public_fields

#: Set (to anything but "" or "0") by ``.ci/run``: a service a test needs (PostgreSQL, Redis,
#: Chromium, a Docker Compose v2 client) that is missing fails the test instead of skipping it.
REQUIRE_SERVICES = "GALMET_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(REQUIRE_SERVICES, "") not in ("", "0")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test because a service it needs is missing (``reason`` says which and why),
    or fail it under ``GALMET_REQUIRE_SERVICES=1``, where CI promises every service."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES}=1: required here)", pytrace=False)
    pytest.skip(reason)


def tiny_checkpoint(n_out: int = 2, seed: int = 0, **fields) -> Checkpoint:
    """An untrained ResNet-34 checkpoint (32 px input) predicting oh_p50 and, with
    ``n_out=2``, lgm_tot_p50; ``fields`` set other Checkpoint fields (config, sigma_scale)."""
    torch.manual_seed(seed)
    net = GalmetNet(n_out)
    net.train()  # non-trivial BatchNorm statistics, so that eval mode is not the identity
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32))
    return Checkpoint(
        outputs=["oh_p50", "lgm_tot_p50"][:n_out],
        target_mean=[9.0, 10.0][:n_out],
        target_std=[0.1, 0.5][:n_out],
        input_size=32,
        bands="gri",
        model_states=[net.state_dict()],
        **fields,
    )


def service(tiny_model: Path, skyserver: str, database_url: str, tmp_path: Path, **extra):
    """The galmet service over loopback (a context manager yielding its base URL), with
    small limits and quick SkyServer retries for tests; ``extra`` settings override them."""
    from galmet.app.core.config import Settings
    from galmet.app.main import create_app
    from galmet.training.mock_skyserver import serve_in_thread

    values = {
        "database_url": database_url,
        "model": tiny_model,
        "skyserver_url": skyserver,
        "device": "cpu",
        "tta": 2,
        "cache_dir": tmp_path,
        "max_upload_bytes": 300_000,
        "skyserver_retries": 1,
        "skyserver_timeout": 2.0,
    }
    settings = Settings(**(values | extra))
    return serve_in_thread(create_app(settings), release="", lifespan="on")


def galaxy(mock_sky, i: int = 0) -> tuple[float, float]:
    row = mock_sky.catalog()[i]
    return float(row["ra"]), float(row["dec"])


def offline_predictions(model: Path, images: list[bytes], tta: int) -> list[dict]:
    """The public fields (``galmet.record``) of a clean, offline prediction for each encoded
    image: ``Predictor`` on ``decode_image`` at the model's input size, the one preprocessing
    path of training; what the service and the workers must reproduce."""
    predictor = Predictor(Checkpoint.load(model))
    pixels = [decode_image(data, predictor.input_size) for data in images]
    records = predictor.predict_arrays(pixels, tta)
    return [public_fields(r["outputs"], r["sigma"], r["tta_spread"]) for r in records]


def model_cutouts(model: Path, sky, positions: list[tuple[float, float]]) -> list[bytes]:
    """The JPEGs SkyServer (the mock serving ``sky``) answers at ``positions`` for the cutout
    the model asks for (``fetch_geometry``): the bytes a clean run of the model sees."""
    size, scale = fetch_geometry(Checkpoint.load(model))
    return [sky.cutout_jpeg(ra, dec, scale, size, size) for ra, dec in positions]
