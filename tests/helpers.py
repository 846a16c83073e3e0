"""Helpers for the service tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def service(tiny_model: Path, skyserver: str, database_url: str, tmp_path: Path, **extra):
    """The galmet service over loopback (a context manager yielding its base URL), with
    small limits and quick SkyServer retries for tests."""
    from app.core.config import Settings
    from app.main import create_app
    from training.mock_skyserver import serve_in_thread

    settings = Settings(
        database_url=database_url,
        model=tiny_model,
        skyserver_url=skyserver,
        device="cpu",
        tta=2,
        cache_dir=tmp_path,
        max_upload_bytes=300_000,
        skyserver_retries=1,
        skyserver_timeout=2.0,
        **extra,
    )
    return serve_in_thread(create_app(settings), release="", lifespan="on")


def galaxy(mock_sky, i: int = 0) -> tuple[float, float]:
    row = mock_sky.catalog()[i]
    return float(row["ra"]), float(row["dec"])
