"""Accounts, API keys and quota overrides in the database (used by the CLI and the server)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from meshgate.accounts.keys import new_key
from meshgate.accounts.passwords import hash_password, needs_rehash, verify_password
from meshgate.quota.cycles import CYCLES
from meshgate.store.tables import accounts, api_keys, key_budget_usage, quota_overrides, quota_usage, usage_events


class AccountError(ValueError):
    """A request the CLI or an admin made that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    is_admin: bool
    disabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    account_id: int
    name: str
    secret_hash: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    expires_at: float | None = None
    models: tuple[str, ...] | None = None  # catalog model ids the key may use; None: all
    budget_tokens: int | None = None  # the key's own limit per cycle; None: only the account's quotas
    budget_cycle: str | None = None  # one of cycles.CYCLES, set exactly when budget_tokens is


class AccountStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- accounts
    def create_account(self, name: str, *, is_admin: bool = False, password: str | None = None) -> Account:
        name = name.strip()
        if not name:
            raise AccountError("account name must not be empty")
        if self.find_account(name) is not None:
            raise AccountError(f"account {name!r} already exists")
        password_hash = None if password is None else hash_password(password)
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(accounts).values(
                    name=name, is_admin=is_admin, disabled=False, created_at=time.time(), password_hash=password_hash
                )
            )
            account_id = result.inserted_primary_key[0]  # type: ignore[index]
        account = self.get_account(account_id)
        assert account is not None
        return account

    def find_account(self, name: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.name == name)).first()
        return _account(row) if row else None

    def get_account(self, account_id: int) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
        return _account(row) if row else None

    def require_account(self, name: str) -> Account:
        account = self.find_account(name)
        if account is None:
            raise AccountError(f"no account named {name!r} (create it with `meshgate accounts create {name}`)")
        return account

    def list_accounts(self) -> list[Account]:
        with self.engine.connect() as conn:
            return [_account(r) for r in conn.execute(select(accounts).order_by(accounts.c.id))]

    # -- passwords (web log-in); hashing is slow on purpose: call these off the event loop
    def set_password(self, account_id: int, password: str) -> None:
        password_hash = hash_password(password)  # PasswordError if too short or too long
        with self.engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.id == account_id).values(password_hash=password_hash))

    def check_password(self, name: str, password: str) -> Account | None:
        """The account if `password` is its password (whether or not it is disabled), else None.

        Takes as long for a name with no account or no password, so timing tells nothing.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.name == name)).first()
        stored = row.password_hash if row is not None else None
        if not verify_password(stored, password) or row is None or stored is None:
            return None
        if needs_rehash(stored):
            self.set_password(row.id, password)
        return _account(row)

    def has_password(self, account_id: int) -> bool:
        with self.engine.connect() as conn:
            stored = conn.execute(select(accounts.c.password_hash).where(accounts.c.id == account_id)).scalar()
        return stored is not None

    def any_password_set(self) -> bool:
        """Whether any account can log in to the web app yet (the first sign-up becomes admin if not)."""
        with self.engine.connect() as conn:
            return (
                conn.execute(select(accounts.c.id).where(accounts.c.password_hash.is_not(None)).limit(1)).first()
                is not None
            )

    def set_admin(self, account_id: int, is_admin: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.id == account_id).values(is_admin=is_admin))

    # -- API keys
    def create_key(
        self,
        account_id: int,
        name: str = "",
        expires_in: float | None = None,
        *,
        models: Sequence[str] | None = None,
        budget_tokens: int | None = None,
        budget_cycle: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Returns the stored key and its secret, which exists nowhere else afterwards.

        `models` limits the key to those catalog ids (None: all models); `budget_tokens` per
        `budget_cycle` is the key's own token budget, on top of the account's quotas.
        """
        scope = _check_models(models)
        _check_budget(budget_tokens, budget_cycle)
        key_id, secret, secret_hash = new_key()
        now = time.time()
        expires_at = now + expires_in if expires_in is not None else None
        with self.engine.begin() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    account_id=account_id,
                    name=name,
                    secret_hash=secret_hash,
                    created_at=now,
                    expires_at=expires_at,
                    models=None if scope is None else json.dumps(list(scope)),
                    budget_tokens=budget_tokens,
                    budget_cycle=budget_cycle,
                )
            )
        key = ApiKey(
            key_id, account_id, name, secret_hash, now, None, None, expires_at, scope, budget_tokens, budget_cycle
        )
        return key, secret

    def get_key(self, key_id: str) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def list_keys(self, account_id: int) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(api_keys).where(api_keys.c.account_id == account_id).order_by(api_keys.c.created_at)
            )
            return [_key(r) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(and_(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)))
                .values(revoked_at=time.time())
            )
        key = self.get_key(key_id)
        if key is None:
            raise AccountError(f"no API key with id {key_id!r}")
        if result.rowcount == 0 and key.revoked_at is None:  # pragma: no cover - race with another writer
            raise AccountError(f"could not revoke {key_id!r}")
        return key

    def keys_to_refuse(self, revoked_since: float) -> list[str]:
        """Keys revoked since then, and every key of a disabled account: what a cache must drop."""
        disabled = select(accounts.c.id).where(accounts.c.disabled.is_(True))
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(api_keys.c.id).where(
                    or_(api_keys.c.revoked_at >= revoked_since, api_keys.c.account_id.in_(disabled))
                )
            )
            return [r[0] for r in rows]

    def set_disabled(self, name: str, disabled: bool) -> Account:
        account = self.require_account(name)
        with self.engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.id == account.id).values(disabled=disabled))
        updated = self.get_account(account.id)
        assert updated is not None
        return updated

    def touch_keys(self, last_used: dict[str, float]) -> None:
        if not last_used:
            return
        with self.engine.begin() as conn:
            for key_id, at in last_used.items():
                conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))

    def budget_used(self, api_key_id: str, period: str) -> int:
        """Tokens settled on a key's budget in one period (cycles.current_period), as committed."""
        with self.engine.connect() as conn:
            used = conn.execute(
                select(key_budget_usage.c.used).where(
                    and_(key_budget_usage.c.api_key_id == api_key_id, key_budget_usage.c.period == period)
                )
            ).scalar()
        return int(used or 0)

    # -- quota overrides
    def set_quota(self, account_id: int, model: str, bucket: str, tokens: int) -> None:
        if tokens < 0:
            raise AccountError("tokens must be >= 0")
        values = dict(account_id=account_id, model=model, bucket=bucket, tokens=tokens, updated_at=time.time())
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        stmt = dialect_insert(quota_overrides).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id", "model", "bucket"],
            set_={"tokens": tokens, "updated_at": values["updated_at"]},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def remove_quota(self, account_id: int, model: str, bucket: str) -> None:
        """Back to the catalog's quota; `updated_at` cannot mark a deleted row, so the count changes instead."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(quota_overrides).where(
                    and_(
                        quota_overrides.c.account_id == account_id,
                        quota_overrides.c.model == model,
                        quota_overrides.c.bucket == bucket,
                    )
                )
            )

    def quota_overrides(self) -> dict[tuple[int, str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(quota_overrides))
            return {(r.account_id, r.model, r.bucket): r.tokens for r in rows}

    def overrides_version(self) -> tuple[int, float]:
        """Changes whenever an override is set: lets the server reload them only when needed."""
        with self.engine.connect() as conn:
            row = conn.execute(select(func.count(), func.max(quota_overrides.c.updated_at))).one()
        return int(row[0]), float(row[1] or 0.0)

    def usage_rows(self, account_id: int, day: str) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(quota_usage.c.model, quota_usage.c.bucket, quota_usage.c.used).where(
                    and_(quota_usage.c.account_id == account_id, quota_usage.c.day == day)
                )
            )
            return {(r.model, r.bucket): int(r.used) for r in rows}

    def usage_history(self, since_day: str, account_id: int | None = None) -> list[UsageDay]:
        """Tokens settled per (day, model, bucket, API key) since a UTC day; every account's if none is given."""
        total = func.sum(usage_events.c.total_tokens)
        query = (
            select(usage_events.c.day, usage_events.c.model, usage_events.c.bucket, usage_events.c.api_key_id, total)
            .where(usage_events.c.day >= since_day)
            .group_by(usage_events.c.day, usage_events.c.model, usage_events.c.bucket, usage_events.c.api_key_id)
            .order_by(usage_events.c.day)
        )
        if account_id is not None:
            query = query.where(usage_events.c.account_id == account_id)
        with self.engine.connect() as conn:
            return [UsageDay(r[0], r[1], r[2], r[3], int(r[4] or 0)) for r in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class UsageDay:
    day: str
    model: str
    bucket: str
    api_key_id: str | None  # None: not through a key (the web chat)
    tokens: int


def _account(row: object) -> Account:
    return Account(row.id, row.name, bool(row.is_admin), bool(row.disabled), row.created_at)  # type: ignore[attr-defined]


def _check_models(models: Sequence[str] | None) -> tuple[str, ...] | None:
    if models is None:
        return None
    if isinstance(models, str):
        raise AccountError("models must be a list of model ids, not one string")
    if not models:
        raise AccountError("a key scoped to models needs at least one model id (or no scope: all models)")
    scope: list[str] = []
    for model in models:
        if not isinstance(model, str) or not model.strip():
            raise AccountError(f"model ids must be non-empty strings, not {model!r}")
        if model.strip() not in scope:
            scope.append(model.strip())
    return tuple(scope)


def _check_budget(tokens: int | None, cycle: str | None) -> None:
    if tokens is None and cycle is None:
        return
    if tokens is None:
        raise AccountError(f"a budget cycle needs a budget: give the tokens per {cycle} cycle too")
    if cycle is None:
        raise AccountError(f"a budget needs a cycle: one of {', '.join(CYCLES)}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise AccountError(f"the budget must be a whole number of tokens >= 1, not {tokens!r}")
    if cycle not in CYCLES:
        raise AccountError(f"unknown budget cycle {cycle!r}: use one of {', '.join(CYCLES)}")


def _key(row: object) -> ApiKey:
    r: Any = row
    models = None if r.models is None else tuple(json.loads(r.models))
    return ApiKey(
        r.id,
        r.account_id,
        r.name,
        r.secret_hash,
        r.created_at,
        r.last_used_at,
        r.revoked_at,
        r.expires_at,
        models,
        r.budget_tokens,
        r.budget_cycle,
    )
