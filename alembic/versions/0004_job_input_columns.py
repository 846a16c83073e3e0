"""Batch jobs keep the user's table: the input's columns and cells, and the model's notice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_columns", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("notice", sa.Text(), nullable=True))
    with op.batch_alter_table("job_targets") as batch:
        batch.add_column(sa.Column("input_cells", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_targets") as batch:
        batch.drop_column("input_cells")
    with op.batch_alter_table("jobs") as batch:
        for column in ("notice", "input_columns"):
            batch.drop_column(column)
