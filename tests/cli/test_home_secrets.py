"""Secrets at rest: a private home and database, a key file created 0600, the key printed once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshgate.accounts.service import AccountStore
from meshgate.catalog.spec import ModelSpec
from meshgate.cli.home import prepare_home, write_secret
from meshgate.cli.serve import _welcome
from meshgate.config import Settings, load_settings
from meshgate.store.engine import migrate, sync_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MESHGATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MESHGATE_DATABASE_URL", raising=False)
    return load_settings()


def test_home_and_database_are_private_from_the_start(settings: Settings) -> None:
    old = os.umask(0o022)  # the usual umask, under which files would be 0644
    try:
        prepare_home(settings)
        migrate(settings.database_url)
        store = AccountStore(sync_engine(settings.database_url))
        store.create_account("alice")
    finally:
        os.umask(old)
    assert mode(settings.home) == 0o700
    database = settings.sqlite_path
    assert database is not None
    for path in (database, *database.parent.glob(database.name + "-*")):  # with the WAL files SQLite made
        assert mode(path) == 0o600, path


def test_a_loose_home_and_database_are_tightened(settings: Settings) -> None:
    settings.home.mkdir(mode=0o755)
    settings.home.chmod(0o755)
    database = settings.sqlite_path
    assert database is not None
    database.write_bytes(b"")
    database.chmod(0o644)
    prepare_home(settings)
    assert mode(settings.home) == 0o700 and mode(database) == 0o600


def test_write_secret_never_exposes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    old = os.umask(0)  # even with no umask at all
    try:
        write_secret(path, "new\n")
    finally:
        os.umask(old)
    assert path.read_text() == "new\n" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary left behind


def test_the_key_is_printed_only_when_it_is_created(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_home(settings)
    migrate(settings.database_url)
    store = AccountStore(sync_engine(settings.database_url))
    models = [ModelSpec(id="some/chat", kind="chat", context_length=8000, daily_quota={"api": 1000})]
    _welcome(settings, store, models)
    first = capsys.readouterr().err
    key_file = settings.home / "local-api-key"
    secret = key_file.read_text().strip()
    assert secret in first and mode(key_file) == 0o600
    _welcome(settings, store, models)
    later = capsys.readouterr().err
    assert secret not in later and str(key_file) in later
    assert key_file.read_text().strip() == secret  # the same key, not a new one per start
