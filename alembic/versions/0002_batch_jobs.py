"""Batch jobs: jobs, their chunks (units of work) and their targets (one per input row).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 18:12:14
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("tta", sa.Integer(), nullable=False),
        sa.Column("n_targets", sa.Integer(), nullable=False),
        sa.Column("n_chunks", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_table(
        "job_chunks",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_chunks_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "chunk", name=op.f("pk_job_chunks")),
    )
    op.create_table(
        "job_targets",
        sa.Column("id", Id, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("ra", sa.Float(), nullable=True),
        sa.Column("dec", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=True),
        sa.Column("prediction_id", Id, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'done', 'failed', 'invalid')", name=op.f("ck_job_targets_status")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_targets_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_job_targets_prediction_id_predictions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_targets")),
        sa.UniqueConstraint("job_id", "row", name=op.f("uq_job_targets_job_id_row")),
    )
    with op.batch_alter_table("job_targets", schema=None) as batch_op:
        batch_op.create_index("ix_job_targets_chunk", ["job_id", "chunk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_targets", schema=None) as batch_op:
        batch_op.drop_index("ix_job_targets_chunk")

    op.drop_table("job_targets")
    op.drop_table("job_chunks")
    op.drop_table("jobs")
