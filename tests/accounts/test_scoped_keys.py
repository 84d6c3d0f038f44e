"""Scoped API keys: models and a token budget per cycle, validated, stored, read back; the migration to them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert

from meshgate.accounts.service import AccountError, AccountStore
from meshgate.store.engine import MIGRATIONS, migrate, sync_engine
from meshgate.store.tables import key_budget_usage, metadata


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    return AccountStore(sync_engine(url))


def test_scope_and_budget_are_stored_and_read_back(store: AccountStore) -> None:
    account = store.create_account("alice")
    key, _ = store.create_key(
        account.id,
        "ci",
        models=["meta-llama/Llama-3.3-70B-Instruct", " BAAI/bge-m3 ", "meta-llama/Llama-3.3-70B-Instruct"],
        budget_tokens=12_000,
        budget_cycle="daily",
    )
    assert key.models == ("meta-llama/Llama-3.3-70B-Instruct", "BAAI/bge-m3")  # stripped, duplicates dropped
    assert (key.budget_tokens, key.budget_cycle) == (12_000, "daily")
    assert store.get_key(key.id) == key
    assert store.list_keys(account.id) == [key]
    plain, _ = store.create_key(account.id, "laptop")
    loaded = store.get_key(plain.id)
    assert loaded is not None and (loaded.models, loaded.budget_tokens, loaded.budget_cycle) == (None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_tokens": 100}, "a budget needs a cycle: one of 8h, daily, weekly, monthly"),
        ({"budget_cycle": "daily"}, "a budget cycle needs a budget"),
        ({"budget_tokens": 0, "budget_cycle": "daily"}, "whole number of tokens >= 1, not 0"),
        ({"budget_tokens": -5, "budget_cycle": "8h"}, ">= 1, not -5"),
        ({"budget_tokens": True, "budget_cycle": "8h"}, ">= 1, not True"),
        ({"budget_tokens": 10, "budget_cycle": "yearly"}, "unknown budget cycle 'yearly'"),
        ({"models": []}, "at least one model id"),
        ({"models": ["a", " "]}, "non-empty strings, not ' '"),
        ({"models": "meta-llama/Llama-3.3-70B-Instruct"}, "a list of model ids, not one string"),
    ],
)
def test_invalid_scopes_and_budgets_are_refused(store: AccountStore, kwargs: dict[str, object], message: str) -> None:
    account = store.create_account("bob")
    with pytest.raises(AccountError, match=message.replace("(", r"\(")):
        store.create_key(account.id, **kwargs)  # type: ignore[arg-type]
    assert store.list_keys(account.id) == []  # nothing half-created


def test_budget_used_reads_the_durable_usage(store: AccountStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(insert(key_budget_usage).values(api_key_id="k1", period="2026-12-01T16:00Z", used=4321))
    assert store.budget_used("k1", "2026-12-01T16:00Z") == 4321
    assert store.budget_used("k1", "2026-12-02T00:00Z") == 0
    assert store.budget_used("k2", "2026-12-01T16:00Z") == 0


def test_migrated_schema_matches_the_tables(store: AccountStore) -> None:
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_upgrade_from_0002_keeps_existing_keys_unscoped(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0002")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO accounts (id, name, is_admin, disabled, created_at) VALUES (1, 'old', 0, 0, 1.0)")
        conn.execute(
            "INSERT INTO api_keys (id, account_id, name, secret_hash, created_at) VALUES ('oldkey', 1, '', 'h', 1.0)"
        )
    migrate(url)
    key = AccountStore(sync_engine(url)).get_key("oldkey")
    assert key is not None and (key.models, key.budget_tokens, key.budget_cycle) == (None, None, None)
    command.downgrade(config, "0002")  # and back: the columns and the table go
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
        assert "budget_tokens" not in columns and "models" not in columns and "expires_at" in columns
        assert conn.execute("SELECT id FROM api_keys").fetchall() == [("oldkey",)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "key_budget_usage" not in tables
