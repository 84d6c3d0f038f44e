"""A web chat answer keeps its model's reasoning apart from its content

A reasoning model's answer is shown with its thinking folded above it; the thinking is not sent
back to the model with the next message (as OpenAI's and vLLM's multi-turn guidance says).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversation_messages") as batch:
        batch.add_column(sa.Column("reasoning", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversation_messages") as batch:
        batch.drop_column("reasoning")
