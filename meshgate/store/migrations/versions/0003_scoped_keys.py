"""API keys scoped to models, with a token budget per refresh cycle

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("models", sa.Text(), nullable=True))
    op.add_column("api_keys", sa.Column("budget_tokens", sa.BigInteger(), nullable=True))
    op.add_column("api_keys", sa.Column("budget_cycle", sa.String(length=16), nullable=True))
    op.create_table(
        "key_budget_usage",
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", "period"),
    )


def downgrade() -> None:
    op.drop_table("key_budget_usage")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("budget_cycle")
        batch.drop_column("budget_tokens")
        batch.drop_column("models")
