"""Worker tokens: what `meshgate worker` authenticates with to register an engine.

A token looks like `mgw-<id>-<secret>`: an API key's shape with its own prefix, so neither can be
mistaken for the other (the gateway refuses a worker token on the OpenAI endpoints by its prefix,
and an API key on the registration endpoints). Only the SHA-256 of the whole token is stored, as
for API keys (`keys.py`: 192 random bits make a fast hash safe). A token may be limited to some
catalog models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, insert, select, update

from meshgate.accounts.keys import SecretShape
from meshgate.accounts.service import AccountError
from meshgate.store.tables import worker_tokens

WORKER_TOKENS = SecretShape("mgw-")
TOKEN_PREFIX = WORKER_TOKENS.prefix
TOKEN_LENGTH = WORKER_TOKENS.length
new_token = WORKER_TOKENS.new  # (token id, the whole token to show once, the hash to store)
token_id_of = WORKER_TOKENS.id_of


def looks_like_worker_token(secret: str) -> bool:
    return secret.startswith(TOKEN_PREFIX)


@dataclass(frozen=True, slots=True)
class WorkerToken:
    id: str
    name: str
    secret_hash: str
    models: tuple[str, ...] | None  # catalog model ids it may register replicas of; None: all
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class WorkerTokenStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, name: str = "", models: Sequence[str] | None = None) -> tuple[WorkerToken, str]:
        """The stored token and its secret, which exists nowhere else afterwards."""
        scope = _check_models(models)
        token_id, secret, secret_hash = new_token()
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(worker_tokens).values(
                    id=token_id,
                    name=name,
                    secret_hash=secret_hash,
                    models=None if scope is None else json.dumps(list(scope)),
                    created_at=now,
                )
            )
        return WorkerToken(token_id, name, secret_hash, scope, now, None, None), secret

    def get(self, token_id: str) -> WorkerToken | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(worker_tokens).where(worker_tokens.c.id == token_id)).first()
        return _token(row) if row else None

    def list(self) -> list[WorkerToken]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(worker_tokens).order_by(worker_tokens.c.created_at))
            return [_token(r) for r in rows]

    def revoke(self, token_id: str) -> WorkerToken:
        with self.engine.begin() as conn:
            conn.execute(
                update(worker_tokens)
                .where(and_(worker_tokens.c.id == token_id, worker_tokens.c.revoked_at.is_(None)))
                .values(revoked_at=time.time())
            )
        token = self.get(token_id)
        if token is None:
            raise AccountError(f"no worker token with id {token_id!r}")
        return token

    def touch(self, token_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(worker_tokens).where(worker_tokens.c.id == token_id).values(last_used_at=time.time()))


def _check_models(models: Sequence[str] | None) -> tuple[str, ...] | None:
    if models is None:
        return None
    scope = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
    if not scope:
        raise AccountError("a token scoped to models needs at least one model id (or no scope: all models)")
    return scope


def _token(row: object) -> WorkerToken:
    r: Any = row
    models = None if r.models is None else tuple(json.loads(r.models))
    return WorkerToken(r.id, r.name, r.secret_hash, models, r.created_at, r.last_used_at, r.revoked_at)
