"""usage_events.outcome is 32 characters ("client_disconnect" did not fit in 16 on PostgreSQL); disabled accounts indexed

SQLite ignores a VARCHAR's length, so the gateway's own outcomes went in there; PostgreSQL refused
them, and the shared ledger's history writer retried that batch forever (issue 14).
The partial index on disabled accounts keeps every gateway process's once-a-second key refresh
(server/auth.py) proportional to the disabled accounts, not to all of them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.alter_column("outcome", type_=sa.String(32), existing_type=sa.String(16), existing_nullable=False)
    disabled = sa.text("disabled")
    op.create_index("ix_accounts_disabled", "accounts", ["id"], postgresql_where=disabled, sqlite_where=disabled)


def downgrade() -> None:
    op.drop_index("ix_accounts_disabled", table_name="accounts")
    with op.batch_alter_table("usage_events") as batch:
        batch.alter_column("outcome", type_=sa.String(16), existing_type=sa.String(32), existing_nullable=False)
