"""API key authentication with a cache: no database round trip per request.

Keys are cached by id after the first lookup; every presented key is still hashed and
compared in constant time. Revocations reach the cache through a refresher that asks
the database once a second for keys revoked since its last look, so a revoked key
stops working within about a second on every gateway sharing the database.

The refresh is bounded by what changed, not by how many keys exist (it runs in every gateway
process, every second, on PostgreSQL too): keys revoked in the last seconds (the `revoked_at`
index) and the ids of disabled accounts (a partial index, migration 0008), whose cached keys
are found through an index by account. Revocation times are the CLI's clock, so machines
that share a database need clocks within the 5 s overlap (NTP).

Nothing a client sends can grow memory without bound: a presented key must have the
exact shape of ours (checked before any lookup), and every cache here has a size bound
that evicts its oldest entries, so an attacker can neither fill memory nor flush the
cache to force database lookups for ids it has already been told are unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from meshgate.accounts.keys import KEY_LENGTH, key_id_of, matches
from meshgate.accounts.service import AccountStore
from meshgate.accounts.worker_tokens import TOKEN_PREFIX as WORKER_TOKEN_PREFIX
from meshgate.protocol.errors import ApiError, invalid_api_key
from meshgate.server.http import Scope, header
from meshgate.store.tables import accounts, api_keys

log = logging.getLogger("meshgate.auth")

_NEGATIVE_TTL = 2.0  # unknown key ids are not looked up again for this long
_MAX_NEGATIVE = 10_000
_MAX_KEYS = 100_000  # cached known keys; an evicted key costs one lookup when it comes back
_MAX_AUTHORIZATION = len(b"Bearer ") + KEY_LENGTH + 8  # a little room for stray spaces


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: int
    key_id: str | None  # None for web sessions
    models: frozenset[str] | None = None  # the catalog ids a scoped key may use; None: all
    budget_tokens: int | None = None  # the key's own budget per cycle (quota/cycles.py); None: none
    budget_cycle: str | None = None


@dataclass(frozen=True, slots=True)
class _CachedKey:
    secret_hash: str
    principal: Principal
    expires_at: float | None


class RecentlyUnknown:
    """Key ids looked up and not found, remembered for `ttl` seconds, at most `limit` of them.

    Insertion order is expiry order (one TTL for all), so expired entries leave from the
    front, and when full the oldest goes: O(1) per operation, never a clear-all.
    """

    def __init__(self, ttl: float, limit: int) -> None:
        self._ttl = ttl
        self._limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key_id: str) -> bool:
        until = self._until.get(key_id)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._until[key_id]
        return False

    def add(self, key_id: str) -> None:
        now = time.monotonic()
        until = self._until
        while until and next(iter(until.values())) <= now:
            until.popitem(last=False)
        if len(until) >= self._limit:
            until.popitem(last=False)
        until[key_id] = now + self._ttl
        until.move_to_end(key_id)


def bearer_secret(scope: Scope, max_bytes: int, refuse: Callable[..., ApiError], missing: str, not_bearer: str) -> str:
    """The credential of `Authorization: Bearer …`, or `refuse(missing)` / `refuse(not_bearer)` / `refuse()`.

    A header longer than `max_bytes` (no credential of ours is) is refused before any other work.
    """
    raw = header(scope, b"authorization")
    if raw is None:
        raise refuse(missing)
    if len(raw) > max_bytes:
        raise refuse()
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        raise refuse(not_bearer)
    return token.strip().decode("latin-1")


def _changes(engine: Engine, revoked_since: float) -> tuple[list[str], list[int]]:
    """Keys revoked since then, and the ids of disabled accounts: each read through an index."""
    with engine.connect() as conn:
        revoked = conn.execute(select(api_keys.c.id).where(api_keys.c.revoked_at >= revoked_since))
        disabled = conn.execute(select(accounts.c.id).where(accounts.c.disabled))  # as the partial index says it
        return [r[0] for r in revoked], [r[0] for r in disabled]


class KeyAuthenticator:
    def __init__(self, store: AccountStore) -> None:
        self._store = store
        self._keys: OrderedDict[str, _CachedKey] = OrderedDict()  # oldest first, for eviction
        self._by_account: dict[int, set[str]] = {}  # the cached key ids of each account
        self._unknown = RecentlyUnknown(_NEGATIVE_TTL, _MAX_NEGATIVE)
        self._last_used: dict[str, float] = {}  # only keys that authenticated; emptied by each refresh
        self._revoked_checked_at = time.time()

    async def authenticate(self, scope: Scope) -> Principal:
        secret = bearer_secret(
            scope,
            _MAX_AUTHORIZATION,
            invalid_api_key,
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            "The Authorization header must be 'Bearer YOUR_KEY'.",
        )
        key_id = key_id_of(secret)
        if key_id is None:
            if secret.startswith(WORKER_TOKEN_PREFIX):
                raise invalid_api_key(
                    "This is a worker token: it can only register workers with the gateway. Use an API key here."
                )
            raise invalid_api_key()
        cached = self._keys.get(key_id)
        if cached is None:
            cached = await self._load(key_id)
        if not matches(secret, cached.secret_hash):
            raise invalid_api_key()
        if cached.expires_at is not None and time.time() >= cached.expires_at:
            raise invalid_api_key("This API key has expired; create a new one.")
        last_used = self._last_used
        if len(last_used) < _MAX_KEYS or key_id in last_used:
            last_used[key_id] = time.time()
        return cached.principal

    async def _load(self, key_id: str) -> _CachedKey:
        if key_id in self._unknown:
            raise invalid_api_key()
        key = await asyncio.to_thread(self._store.get_key, key_id)
        account = await asyncio.to_thread(self._store.get_account, key.account_id) if key else None
        if key is None or key.revoked_at is not None or account is None or account.disabled:
            self._unknown.add(key_id)
            raise invalid_api_key()
        models = None if key.models is None else frozenset(key.models)
        principal = Principal(key.account_id, key.id, models, key.budget_tokens, key.budget_cycle)
        cached = _CachedKey(key.secret_hash, principal, key.expires_at)
        keys = self._keys
        if key_id not in keys and len(keys) >= _MAX_KEYS:
            self.forget([next(iter(keys))])
        keys[key_id] = cached
        self._by_account.setdefault(key.account_id, set()).add(key_id)
        return cached

    def forget(self, key_ids: list[str]) -> None:
        for key_id in key_ids:
            cached = self._keys.pop(key_id, None)
            if cached is not None:
                siblings = self._by_account.get(cached.principal.account_id)
                if siblings is not None:
                    siblings.discard(key_id)
                    if not siblings:
                        del self._by_account[cached.principal.account_id]

    async def refresh(self) -> None:
        """Drop revoked keys and disabled accounts' keys from the cache, write last-use times.

        Called about once a second.
        """
        since = self._revoked_checked_at - 5.0  # overlap: a revocation committed during the last look
        self._revoked_checked_at = time.time()
        revoked, disabled = await asyncio.to_thread(_changes, self._store.engine, since)
        by_account = self._by_account
        self.forget(revoked + [k for account in disabled if account in by_account for k in by_account[account]])
        if self._last_used:
            last_used, self._last_used = self._last_used, {}
            await asyncio.to_thread(self._store.touch_keys, last_used)
