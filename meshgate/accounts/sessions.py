"""Browser sessions and invite codes, kept server-side.

A session id is 256 random bits, given to the browser in a cookie; the database keeps
only its SHA-256, so a copy of the database logs nobody in. Each session carries its
own CSRF token (sent back in a header or form field by every state-changing request).
Invite codes are stored the same way: hashed, shown once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, and_, delete, insert, select, update

from meshgate.store.tables import accounts, web_invites, web_sessions


@dataclass(frozen=True, slots=True)
class Session:
    account_id: int
    name: str
    is_admin: bool
    disabled: bool
    csrf_token: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Invite:
    code_prefix: str
    created_by: int | None
    created_at: float
    expires_at: float | None
    used_by: int | None
    used_at: float | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, account_id: int, lifetime: float) -> tuple[str, str]:
        """A new session: (the id for the cookie, kept nowhere else; its CSRF token)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(web_sessions).values(
                    id_hash=_digest(token),
                    account_id=account_id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )
            conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))  # keep the table small
        return token, csrf

    def lookup(self, token: str) -> Session | None:
        """The live session for a cookie's id (None if unknown or expired); the account's current state."""
        if not token or len(token) > 128:
            return None
        query = (
            select(web_sessions, accounts.c.name, accounts.c.is_admin, accounts.c.disabled)
            .join(accounts, accounts.c.id == web_sessions.c.account_id)
            .where(and_(web_sessions.c.id_hash == _digest(token), web_sessions.c.expires_at > time.time()))
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Session(row.account_id, row.name, bool(row.is_admin), bool(row.disabled), row.csrf_token, row.expires_at)

    def delete(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == _digest(token)))

    def delete_for_account(self, account_id: int, *, keep: str | None = None) -> int:
        """Ends every session of an account (a password change), except `keep`'s."""
        condition = web_sessions.c.account_id == account_id
        if keep is not None:
            condition = and_(condition, web_sessions.c.id_hash != _digest(keep))
        with self.engine.begin() as conn:
            return int(conn.execute(delete(web_sessions).where(condition)).rowcount)

    # -- invite codes
    def create_invite(self, created_by: int | None, lifetime: float | None = 7 * 86400) -> str:
        code = "inv-" + secrets.token_urlsafe(18)
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(web_invites).values(
                    code_hash=_digest(code),
                    code_prefix=code[:8],
                    created_by=created_by,
                    created_at=now,
                    expires_at=None if lifetime is None else now + lifetime,
                )
            )
        return code

    def use_invite(self, code: str, account_id: int) -> bool:
        """Marks an unused, unexpired code as used by the account; False if it cannot be used."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(web_invites)
                .where(
                    and_(
                        web_invites.c.code_hash == _digest(code.strip()),
                        web_invites.c.used_at.is_(None),
                        (web_invites.c.expires_at.is_(None)) | (web_invites.c.expires_at > now),
                    )
                )
                .values(used_by=account_id, used_at=now)
            )
            return bool(result.rowcount == 1)

    def invite_usable(self, code: str) -> bool:
        now = time.time()
        with self.engine.connect() as conn:
            row = conn.execute(
                select(web_invites.c.used_at, web_invites.c.expires_at).where(
                    web_invites.c.code_hash == _digest(code.strip())
                )
            ).first()
        return row is not None and row.used_at is None and (row.expires_at is None or row.expires_at > now)

    def list_invites(self) -> list[Invite]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(web_invites).order_by(web_invites.c.created_at.desc()).limit(100))
            return [Invite(r.code_prefix, r.created_by, r.created_at, r.expires_at, r.used_by, r.used_at) for r in rows]
