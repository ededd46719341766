"""Accounts, users, API keys, quotas and hourly usage.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("user_id", sa.String(63), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("service_account", sa.Boolean, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(8), nullable=False),
        sa.Column("account_id", sa.String(63), nullable=False),
        sa.Column("user_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("annotations", sa.JSON, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("expire_time", sa.DateTime, nullable=True),
        sa.Column("deleted", sa.DateTime, nullable=True),
        sa.Column("last_used", sa.DateTime, nullable=True),
        sa.ForeignKeyConstraint(["account_id", "user_id"], ["users.account_id", "users.user_id"],
                                ondelete="CASCADE"),
    )
    op.create_index("ix_api_keys_owner", "api_keys", ["account_id", "user_id"])
    op.create_table(
        "quotas",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("quota_id", sa.String(63), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=True),
        sa.Column("max_value", sa.BigInteger, nullable=True),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),
    )
    op.create_table(
        "usage_hours",
        sa.Column("account_id", sa.String(63), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("usage_type", sa.String(32), primary_key=True),
        sa.Column("hour", sa.DateTime, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for t in ("usage_hours", "quotas", "api_keys", "users", "accounts"):
        op.drop_table(t)
