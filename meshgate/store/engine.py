"""Database engines and schema migrations (Alembic), shared by the CLI and the server.

The server keeps the database off its hot path (caches, the ledger's own writes) and
runs what queries it does make in a thread, so one synchronous engine serves both.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from meshgate.config import normalize_database_url

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL: readers never block the writer; NORMAL: a commit survives a process kill (no fsync per commit).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _prepare(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


def sync_engine(url: str) -> Engine:
    url = normalize_database_url(url)
    _prepare(url)
    if url.startswith("postgresql"):
        # pre_ping: a connection PostgreSQL closed (a restart, a failover, idle timeouts) is replaced, not
        # handed to the key refresher as an error; the pool per process stays small (N processes × servers).
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent; run by `serve` and every CLI command)."""
    url = normalize_database_url(url)
    _prepare(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if not url.startswith("postgresql"):
        command.upgrade(config, "head")
        return
    # Servers on several machines may start at once: one migrates, the others wait and find it done.
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK})
            try:
                command.upgrade(config, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK})
    finally:
        engine.dispose()


_MIGRATION_LOCK = 0x6D657368  # "mesh": the advisory lock id held while migrating
