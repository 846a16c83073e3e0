"""Object identification: the SDSS object at each position asked for, and per job target.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "identifications",
        sa.Column("id", Id, nullable=False),
        sa.Column("sky_key", sa.String(length=40), nullable=False),
        sa.Column("ra", sa.Float(), nullable=False),
        sa.Column("dec", sa.Float(), nullable=False),
        sa.Column("radius_arcsec", sa.Float(), nullable=False),
        sa.Column("obj_id", sa.BigInteger(), nullable=True),
        sa.Column("obj_type", sa.Integer(), nullable=True),
        sa.Column("obj_ra", sa.Float(), nullable=True),
        sa.Column("obj_dec", sa.Float(), nullable=True),
        sa.Column("separation_arcsec", sa.Float(), nullable=True),
        sa.Column("petro_r90_r", sa.Float(), nullable=True),
        sa.Column("petro_mag_r", sa.Float(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identifications")),
        sa.UniqueConstraint(
            "sky_key", "radius_arcsec", name=op.f("uq_identifications_sky_key_radius_arcsec")
        ),
    )
    op.create_index(
        "ix_identifications_position",
        "identifications",
        ["radius_arcsec", "dec"],
        unique=False,
    )
    with op.batch_alter_table("job_targets") as batch:
        batch.add_column(sa.Column("object_status", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("obj_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("obj_type", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("separation_arcsec", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_targets") as batch:
        for column in ("separation_arcsec", "obj_type", "obj_id", "object_status"):
            batch.drop_column(column)
    op.drop_index("ix_identifications_position", table_name="identifications")
    op.drop_table("identifications")
