"""Predictions and cutouts: the result cache and the SDSS cutout cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 16:40:04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cutouts",
        sa.Column("id", Id, nullable=False),
        sa.Column("sky_key", sa.String(length=40), nullable=False),
        sa.Column("ra", sa.Float(), nullable=False),
        sa.Column("dec", sa.Float(), nullable=False),
        sa.Column("scale", sa.Float(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("blank", sa.Boolean(), nullable=False),
        sa.Column(
            "fetched_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cutouts")),
        sa.UniqueConstraint("sky_key", "scale", "size", name=op.f("uq_cutouts_sky_key_scale_size")),
    )
    op.create_index("ix_cutouts_position", "cutouts", ["scale", "size", "dec"])

    op.create_table(
        "predictions",
        sa.Column("id", Id, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("target_key", sa.String(length=80), nullable=False),
        sa.Column("ra", sa.Float(), nullable=True),
        sa.Column("dec", sa.Float(), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("tta", sa.Integer(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("sigma", sa.JSON(), nullable=False),
        sa.Column("tta_spread", sa.JSON(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("kind IN ('sky', 'image')", name=op.f("ck_predictions_kind")),
        sa.CheckConstraint("tta IN (1, 2, 4, 8)", name=op.f("ck_predictions_tta")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "target_key",
            "model_version",
            "tta",
            name=op.f("uq_predictions_target_key_model_version_tta"),
        ),
    )
    op.create_index("ix_predictions_position", "predictions", ["model_version", "tta", "dec"])


def downgrade() -> None:
    op.drop_index("ix_predictions_position", table_name="predictions")
    op.drop_table("predictions")
    op.drop_index("ix_cutouts_position", table_name="cutouts")
    op.drop_table("cutouts")
