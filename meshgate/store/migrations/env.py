"""Alembic environment: runs migrations against the URL set by meshgate.store.engine.migrate."""

from __future__ import annotations

from alembic import context

from meshgate.store.engine import sync_engine
from meshgate.store.tables import metadata

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
engine = sync_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
