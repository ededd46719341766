"""Datasets, batch inference jobs, their per-row results, and shared server secrets.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("dataset_id", sa.String(63), primary_key=True),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("example_count", sa.BigInteger, nullable=False),
        sa.Column("estimated_tokens", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("filenames", sa.JSON, nullable=False),
        sa.Column("user_uploaded", sa.Boolean, nullable=False),
        sa.Column("source_job", sa.String(160), nullable=False),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),
    )
    op.create_table(
        "batch_jobs",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("job_id", sa.String(63), primary_key=True),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("status_code", sa.String(32), nullable=False),
        sa.Column("status_message", sa.String(2000), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("input_dataset_id", sa.String(63), nullable=False),
        sa.Column("output_dataset_id", sa.String(63), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("precision", sa.String(32), nullable=False),
        sa.Column("continued_from", sa.String(63), nullable=False),
        sa.Column("total_rows", sa.BigInteger, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.Column("expire_time", sa.DateTime, nullable=False),
        sa.Column("run_start", sa.DateTime, nullable=True),
        sa.Column("end_time", sa.DateTime, nullable=True),
        sa.Column("api", sa.String(16), nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("owner", sa.String(40), nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),
    )
    op.create_index("ix_batch_jobs_state", "batch_jobs", ["state", "created"])
    op.create_table(
        "batch_results",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("job_id", sa.String(63), primary_key=True),
        sa.Column("custom_id", sa.String(512), primary_key=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(["account_id", "job_id"], ["batch_jobs.account_id", "batch_jobs.job_id"],
                                ondelete="CASCADE"),
    )
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    for t in ("server_secrets", "batch_results", "batch_jobs", "datasets"):
        op.drop_table(t)
