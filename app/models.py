"""Database models of the prediction service: the result cache and the cutout cache.

The migrations in ``alembic/`` are generated from ``Base.metadata``; change a model, then add a
migration (``galmet db revision --message "..."``).

Batch jobs: a ``Job`` holds its input rows as ``JobTarget`` rows (every input row, valid or
not, exactly once: unique on job and row number), split into ``JobChunk`` units of work. A
chunk is run by a Celery worker or by the in-process executor; either writes a target's result
by pointing it at its cached ``Prediction``, so running a chunk twice changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so later migrations can refer to (and SQLite's batch mode can
# rebuild) constraints by name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Prediction(Base):
    """One cached prediction, for a sky position or for an uploaded image.

    ``target_key`` says what was predicted: ``"sky:<sky_key>"`` (see ``app.cache.sky_key``)
    or ``"img:<sha256 of the uploaded file>"``. With the model version and the TTA level it is
    the one unique key, so storing the same result twice (a retried task, concurrent requests)
    leaves one row.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("target_key", "model_version", "tta"),
        CheckConstraint("kind IN ('sky', 'image')", name="kind"),
        CheckConstraint("tta IN (1, 2, 4, 8)", name="tta"),
        # Cone lookups: equal model and TTA, then a Dec range (image rows have no Dec).
        Index("ix_predictions_position", "model_version", "tta", "dec"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "sky" or "image"
    target_key: Mapped[str] = mapped_column(String(80))
    ra: Mapped[float | None] = mapped_column(Float)  # degrees, as first requested
    dec: Mapped[float | None] = mapped_column(Float)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of the checkpoint
    tta: Mapped[int] = mapped_column(Integer)  # 1, 2, 4 or 8 augmented copies
    outputs: Mapped[dict[str, float]] = mapped_column(JSON)  # e.g. {"oh_p50": 9.01}
    sigma: Mapped[dict[str, float]] = mapped_column(JSON)
    tta_spread: Mapped[dict[str, float]] = mapped_column(JSON)
    flags: Mapped[list[str]] = mapped_column(JSON)  # quality flags, e.g. ["blank_cutout"]
    # Out-of-distribution score (galmet.predictor.ood_scores); None for a model without the
    # feature statistics. Its flag, when above the model's threshold, is in ``flags``.
    ood_score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def __repr__(self) -> str:
        return f"<Prediction {self.id} {self.target_key} tta={self.tta}>"


class Cutout(Base):
    """An SDSS SkyServer cutout as fetched, so a repeated position never refetches it."""

    __tablename__ = "cutouts"
    __table_args__ = (
        UniqueConstraint("sky_key", "scale", "size"),
        Index("ix_cutouts_position", "scale", "size", "dec"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sky_key: Mapped[str] = mapped_column(String(40))
    ra: Mapped[float] = mapped_column(Float)
    dec: Mapped[float] = mapped_column(Float)
    scale: Mapped[float] = mapped_column(Float)  # arcsec per pixel
    size: Mapped[int] = mapped_column(Integer)  # pixels, width = height
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    blank: Mapped[bool] = mapped_column(
        Boolean
    )  # off the imaging footprint: SkyServer's near-black JPEG
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def __repr__(self) -> str:
        return f"<Cutout {self.id} {self.sky_key} scale={self.scale} size={self.size}>"


class Identification(Base):
    """Which SDSS object a position asked for is (``galmet.objects``), so that a repeated
    position never asks SkyServer again. ``obj_id`` is None when nothing is within
    ``radius_arcsec``; a look-up that failed is not stored."""

    __tablename__ = "identifications"
    __table_args__ = (
        UniqueConstraint("sky_key", "radius_arcsec"),
        Index("ix_identifications_position", "radius_arcsec", "dec"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sky_key: Mapped[str] = mapped_column(String(40))
    ra: Mapped[float] = mapped_column(Float)  # the position asked for
    dec: Mapped[float] = mapped_column(Float)
    radius_arcsec: Mapped[float] = mapped_column(Float)
    obj_id: Mapped[int | None] = mapped_column(BigInteger)
    obj_type: Mapped[int | None] = mapped_column(Integer)
    obj_ra: Mapped[float | None] = mapped_column(Float)
    obj_dec: Mapped[float | None] = mapped_column(Float)
    separation_arcsec: Mapped[float | None] = mapped_column(Float)
    petro_r90_r: Mapped[float | None] = mapped_column(Float)
    petro_mag_r: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(Base):
    """A batch job: a list of targets, predicted with one model version and TTA level."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # random UUID4, as text
    model_version: Mapped[str] = mapped_column(String(64))
    tta: Mapped[int] = mapped_column(Integer)
    n_targets: Mapped[int] = mapped_column(Integer)  # input rows, the invalid ones included
    n_chunks: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # "json", "csv" or "votable"
    filename: Mapped[str | None] = mapped_column(String(255))
    # The input's column names in order (every row's ``JobTarget.input_cells`` keys), so the
    # results give the user's table back; None for jobs written before they were kept.
    input_columns: Mapped[list[str] | None] = mapped_column(JSON)
    # The model's caveat when the job was submitted (the mock-sky demo's notice), else None.
    notice: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.n_targets} targets>"


class JobChunk(Base):
    """A unit of work of a job: its targets share one batched forward pass.

    ``enqueued_at`` / ``heartbeat_at`` let the API tell a chunk that is waiting or running from
    one whose message or worker was lost, and send it again.
    """

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a runner started it
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobTarget(Base):
    """One input row of a job, with its outcome: queued, done, failed (with the reason, e.g. a
    SkyServer error or a blank cutout) or invalid (a bad row, never run)."""

    __tablename__ = "job_targets"
    __table_args__ = (
        UniqueConstraint("job_id", "row"),
        Index("ix_job_targets_chunk", "job_id", "chunk"),
        CheckConstraint("status IN ('queued', 'done', 'failed', 'invalid')", name="status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    row: Mapped[int] = mapped_column(Integer)  # 1-based data row of the input
    chunk: Mapped[int | None] = mapped_column(Integer)  # None for invalid rows
    target_id: Mapped[str | None] = mapped_column(String(200))  # the user's id column
    ra: Mapped[float | None] = mapped_column(Float)
    dec: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(Text)
    cached: Mapped[bool | None] = mapped_column(Boolean)  # answered from the cache
    # The SDSS object at the position (``found``), none there (``none``), or the look-up
    # failed (``unknown``); None before the chunk ran.
    object_status: Mapped[str | None] = mapped_column(String(8))
    obj_id: Mapped[int | None] = mapped_column(BigInteger)
    obj_type: Mapped[int | None] = mapped_column(Integer)
    separation_arcsec: Mapped[float | None] = mapped_column(Float)
    prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("predictions.id", ondelete="SET NULL")
    )
    input_cells: Mapped[dict | None] = mapped_column(JSON)  # the input row, by column name

    def __repr__(self) -> str:
        return f"<JobTarget {self.job_id}#{self.row} {self.status}>"
