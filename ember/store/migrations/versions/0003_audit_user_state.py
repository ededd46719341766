"""The audit log, and a user's state (a disabled user's keys stop working).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("state", sa.String(32), nullable=False, server_default="ACTIVE"))
    op.create_table(
        "audit_logs",
        sa.Column("entry_id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(63), nullable=False),
        sa.Column("timestamp", sa.DateTime, nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("resource", sa.String(512), nullable=False),
        sa.Column("principal", sa.String(320), nullable=False),
        sa.Column("user_id", sa.String(63), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("key_prefix", sa.String(8), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("user_agent", sa.String(512), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("is_admin_action", sa.Boolean, nullable=False),
    )
    op.create_index("ix_audit_logs_account_time", "audit_logs", ["account_id", "timestamp"])


def downgrade() -> None:
    op.drop_index("ix_audit_logs_account_time", table_name="audit_logs")
    op.drop_table("audit_logs")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("state")
