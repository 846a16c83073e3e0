"""The service's one settings object, read from ``GALMET_*`` environment variables.

Embedded defaults need nothing installed or running: a SQLite file in the user data
directory, in-process inference, the real SDSS DR17 SkyServer, and (with no ``GALMET_MODEL``)
a small demo model trained once on the mock sky and cached.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from galmet.d4 import TTA_LEVELS, TTA_LEVELS_TEXT
from galmet.skyserver import DEFAULT_SKYSERVER_URL


def default_database_url() -> str:
    path = Path(user_data_dir("galmet")) / "galmet.sqlite3"
    return f"sqlite:///{path}"


class Settings(BaseSettings):
    """Service settings; each field is ``GALMET_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="GALMET_", extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    broker_url: str | None = None  # unset: inference runs in-process
    skyserver_url: str = DEFAULT_SKYSERVER_URL
    skyserver_timeout: float = 30.0  # seconds per attempt
    skyserver_retries: int = 3  # after the first attempt, with backoff
    skyserver_rate: float = 10.0  # requests per second per process, to be polite; 0: no limit
    model: Path | None = None  # checkpoint; unset: the mock-sky demo model
    device: str = "auto"
    tta: int | None = None  # 1, 2, 4 or 8; unset: 8 on a GPU, TTA_CPU on the CPU
    max_upload_bytes: int = 5_000_000
    max_job_targets: int = 100_000
    max_job_bytes: int = 20_000_000  # an uploaded target list (CSV, JSON, VOTable or FITS)
    # Batch jobs are cut into chunks; a chunk's targets share one batched forward pass.
    job_chunk_size: int = 128
    # A chunk whose runner has not been heard of for this long (its message lost with a Redis
    # restart, its worker killed) is sent again; runners beat every third of it.
    job_stall_seconds: float = 120.0
    job_sweep_seconds: float = 15.0  # how often the API looks for such chunks
    fetch_concurrency: int = 8  # cutouts fetched at once per chunk
    # Object identification: the SDSS object within this radius of a position is the one a
    # prediction is about (its cutout is centred on it); false: predict at the position as is.
    identify: bool = True
    match_radius_arcsec: float = Field(default=3.0, gt=0, le=60)
    # IVOA cone search (/scs): the largest search radius (degrees) and the most galaxies one
    # cone answers (each is a prediction); both are stated in every answer's metadata.
    scs_max_sr: float = Field(default=0.1, gt=0, le=10)
    scs_max_rows: int = Field(default=100, ge=1, le=10_000)
    log_json: bool = False  # JSON log lines (job and chunk ids as fields)
    worker_metrics_port: int | None = None  # worker pool process k serves metrics on port + k
    # Micro-batching of the inference engine.
    batch_size: int = 64
    batch_wait_ms: float = 5.0
    # Overload: beyond this many images waiting for the model, a new single prediction is a
    # 503 with Retry-After (cached answers and batch jobs go on).
    max_queue: int = Field(default=1000, ge=0)
    # The most recent cached answers each process keeps encoded in memory (galmet.app.hot),
    # about 1.5 kB each; 0: none.
    hot_answers: int = Field(default=4096, ge=0)
    # The demo model, built when no model is configured (tests shrink it).
    cache_dir: Path = Field(default_factory=lambda: Path(user_cache_dir("galmet")))
    # Measured: 3000 galaxies, 32 px, 6 epochs build in ~80 s on 2 cores and reach a test
    # RMSE of 0.086 dex at TTA 4 (std of the targets 0.133); more did not help.
    demo_galaxies: int = 3000
    demo_size: int = 32
    demo_epochs: int = 6

    @field_validator("tta")
    @classmethod
    def _tta(cls, value: int | None) -> int | None:
        if value is not None and value not in TTA_LEVELS:
            raise ValueError(f"GALMET_TTA must be {TTA_LEVELS_TEXT}")
        return value


def checked_settings() -> Settings:
    """The settings from the environment, or a ``GalmetError`` naming the bad one (for the
    command line: one line, no traceback)."""
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError

    from galmet.app.db import normalize_url
    from galmet.errors import GalmetError

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise GalmetError(f"bad GALMET_{str(first['loc'][0]).upper()}: {first['msg']}") from None
    try:
        normalize_url(settings.database_url)
    except ArgumentError as exc:
        raise GalmetError(f"bad GALMET_DATABASE_URL: {exc}") from None
    if settings.model is not None and not settings.model.exists():
        raise GalmetError(f"GALMET_MODEL={settings.model} does not exist")
    return settings


@lru_cache
def get_settings() -> Settings:
    """The settings of this process (read once)."""
    return Settings()
