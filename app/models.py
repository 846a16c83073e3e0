"""Database models of the prediction service: the result cache and the cutout cache.

The migrations in ``alembic/`` are generated from ``Base.metadata``; change a model, then add a
migration (``galmet db revision --message "..."``). Batch jobs add their own tables later.
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
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
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
