"""A batch job's endpoint: the URL every row of an OpenAI batch must name.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.add_column(sa.Column("endpoint", sa.String(64), nullable=False, server_default=""))
    # Every OpenAI batch made before this column was a batch of completions.
    op.execute("UPDATE batch_jobs SET endpoint = '/v1/completions' WHERE api = 'openai'")


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_column("endpoint")
