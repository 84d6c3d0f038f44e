"""The store on PostgreSQL: every URL spelling, every migration (up, down, up), the CLI while servers run."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from meshgate.config import load_settings, normalize_database_url
from meshgate.store.engine import MIGRATIONS, migrate, sync_engine
from tests.conftest import require_services, shared_backend


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+asyncpg://u@h/db?ssl=require", "postgresql+psycopg://u@h/db?sslmode=require"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_urls_in_every_spelling_use_psycopg(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    assert load_settings(database_url=given).database_url == expected


def test_every_migration_runs_up_and_down_on_postgresql() -> None:
    from alembic import command
    from alembic.config import Config

    require_services()
    url = normalize_database_url(shared_backend("migrations")["MESHGATE_DATABASE_URL"])
    migrate(url)
    migrate(url)  # idempotent
    engine = sync_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert {"accounts", "api_keys", "quota_overrides", "quota_usage", "usage_events", "key_budget_usage"} <= tables
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(url)
    with engine.begin() as conn:  # the widest outcome fits (SQLite never checked a VARCHAR's length)
        conn.execute(
            text(
                "INSERT INTO usage_events VALUES ('r1', 1, NULL, 'm', 'api', '2026-12-02', 1, 1, 2,"
                " 'client_disconnect', 0)"
            )
        )
    engine.dispose()


def test_the_cli_works_on_postgresql_while_two_servers_run(fake_upstream: object, tmp_path: object) -> None:
    """Accounts and keys made with the CLI on one schema serve on both replicas (see test_replicas.py)."""
    require_services()
    from pathlib import Path

    from tests.conftest import stop
    from tests.scaleout.conftest import start_replicas

    made = start_replicas(Path(str(tmp_path)), fake_upstream)  # type: ignore[arg-type]
    try:
        name, key = made.cli.new_account("cli")
        assert "created key" in made.cli.cli("keys", "create", "--account", name).stdout
        assert name in made.cli.cli("accounts", "list").stdout
        for replica in made.replicas:
            assert replica.usage(key)["object"] == "usage"
        assert f"usage of {name}" in made.cli.cli("usage", "--account", name).stdout
    finally:
        for replica in made.replicas:
            if replica.process is not None:
                stop(replica.process)
