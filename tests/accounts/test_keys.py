"""API keys: shape, hashing, constant-time verification, and the store around them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.accounts.keys import hash_key, key_id_of, matches, new_key
from meshgate.accounts.service import AccountError, AccountStore
from meshgate.store.engine import migrate, sync_engine


def test_new_key_shape_and_hash() -> None:
    key_id, secret, stored = new_key()
    assert secret.startswith(f"mg-{key_id}-") and len(secret) > 40
    assert key_id_of(secret) == key_id
    assert stored == hash_key(secret) and secret not in stored
    assert matches(secret, stored) and not matches(secret + "x", stored)
    assert len({new_key()[1] for _ in range(100)}) == 100


@pytest.mark.parametrize("presented", ["", "sk-abc", "mg-", "mg-abc", "mg--secret", "mg-abc-"])
def test_malformed_keys_have_no_id(presented: str) -> None:
    assert key_id_of(presented) is None


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    return AccountStore(sync_engine(url))


def test_keys_are_stored_hashed_and_revocable(store: AccountStore, tmp_path: Path) -> None:
    account = store.create_account("alice")
    key, secret = store.create_key(account.id, "laptop")
    assert secret not in (tmp_path / "db.sqlite").read_bytes().decode("latin-1")  # never in clear
    assert [k.id for k in store.list_keys(account.id)] == [key.id]
    assert store.keys_to_refuse(0) == []
    revoked = store.revoke_key(key.id)
    assert revoked.revoked_at is not None
    assert store.keys_to_refuse(revoked.revoked_at - 1) == [key.id]
    assert store.keys_to_refuse(revoked.revoked_at + 1) == []
    with pytest.raises(AccountError):
        store.revoke_key("nope")


def test_accounts_are_unique_and_named(store: AccountStore) -> None:
    store.create_account("bob")
    with pytest.raises(AccountError, match="already exists"):
        store.create_account("bob")
    with pytest.raises(AccountError, match="empty"):
        store.create_account("  ")
    with pytest.raises(AccountError, match="no account"):
        store.require_account("carol")


def test_quota_overrides_upsert(store: AccountStore) -> None:
    account = store.create_account("dave")
    before = store.overrides_version()
    store.set_quota(account.id, "m", "api", 10)
    store.set_quota(account.id, "m", "api", 20)
    assert store.quota_overrides() == {(account.id, "m", "api"): 20}
    assert store.overrides_version() != before
    with pytest.raises(AccountError):
        store.set_quota(account.id, "m", "api", -1)


def test_disabled_accounts_keys_are_refused(store: AccountStore) -> None:
    account = store.create_account("erin")
    key, _ = store.create_key(account.id)
    assert store.set_disabled("erin", True).disabled
    assert store.keys_to_refuse(1e12) == [key.id]  # whatever the time: while the account is disabled
    assert not store.set_disabled("erin", False).disabled
    assert store.keys_to_refuse(1e12) == []
