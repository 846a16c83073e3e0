"""Shared fixtures: a small mock sky and a mock SkyServer serving it on loopback.

Several people add fixtures here; keep each one small and documented.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from galmet.app.db import normalize_url
from galmet.training.mocksky import MockSky
from tests.helpers import skip_or_fail, tiny_checkpoint


@pytest.fixture(scope="session")
def mock_sky() -> MockSky:
    """A small deterministic mock sky: 200 sample galaxies plus the rows the cuts reject."""
    return MockSky(200, seed=1)


@pytest.fixture(scope="session")
def mock_skyserver(mock_sky: MockSky) -> Iterator[str]:
    """Base URL (release included, e.g. ``http://127.0.0.1:PORT/dr17``) of a mock SkyServer
    serving ``mock_sky`` without faults. Shared by the session: reset its counters with
    ``POST {root}/mock/reset`` before counting requests."""
    from galmet.training.mock_skyserver import create_app, serve_in_thread

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


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """``tiny_model`` marked as the mock-sky demo, as ``galmet serve`` builds without a model."""
    from galmet.app.demo import DEMO_NOTICE

    path = tmp_path_factory.mktemp("demo") / "demo.pt"
    config = {"image_size": 64, "pixel_scale": 0.396, "demo": True, "notice": DEMO_NOTICE}
    tiny_checkpoint(config=config, sigma_scale={1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}).save(path)
    return path


POSTGRES_URL = os.environ.get(
    "GALMET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the test server, for CREATE/DROP DATABASE; skips if none
    (fails under ``GALMET_REQUIRE_SERVICES=1``)."""
    engine = create_engine(
        normalize_url(POSTGRES_URL),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
    else:
        reason = None
    if reason is not None:  # outside the except: a failure shows no chained traceback
        engine.dispose()
        skip_or_fail(f"PostgreSQL does not answer at {POSTGRES_URL}: {reason}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database: a SQLite file in a folder not made yet, or a fresh PostgreSQL db."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'galmet.sqlite3'}"
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    name = f"galmet_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        # Left as plain postgresql://: the service must pick psycopg 3 by itself.
        yield (
            normalize_url(POSTGRES_URL)
            .set(drivername="postgresql", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def cuda_gpu() -> None:
    """For CUDA-only tests: skip without a GPU, or fail when ``GALMET_REQUIRE_CUDA=1`` (set it
    on a GPU machine, so that a driver torch cannot use fails the run instead of skipping)."""
    import torch

    if torch.cuda.is_available():
        return
    reason = f"needs a CUDA GPU (torch {torch.__version__}, CUDA {torch.version.cuda})"
    if os.environ.get("GALMET_REQUIRE_CUDA") == "1":
        pytest.fail(f"GALMET_REQUIRE_CUDA=1 but CUDA is not available: {reason}")
    pytest.skip(reason)
