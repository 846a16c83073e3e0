"""Shared fixtures: a small mock sky and a mock SkyServer serving it on loopback.

Several people add fixtures here; keep each one small and documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import tiny_checkpoint
from training.mocksky import MockSky


@pytest.fixture(scope="session")
def mock_sky() -> MockSky:
    """A small deterministic mock sky: 200 sample galaxies plus the rows the cuts reject."""
    return MockSky(200, seed=1)


@pytest.fixture(scope="session")
def mock_skyserver(mock_sky: MockSky) -> Iterator[str]:
    """Base URL (release included, e.g. ``http://127.0.0.1:PORT/dr17``) of a mock SkyServer
    serving ``mock_sky`` without faults. Shared by the session: reset its counters with
    ``POST {root}/mock/reset`` before counting requests."""
    from training.mock_skyserver import create_app, serve_in_thread

    with serve_in_thread(create_app(mock_sky)) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random ResNet-34 predicting metallicity and mass, trained on 64 px at 0.396"/px."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    tiny_checkpoint(
        config={"image_size": 64, "pixel_scale": 0.396},
        sigma_scale={1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0},
    ).save(path)
    return path
