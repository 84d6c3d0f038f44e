"""API key secrets: generated once, stored as a hash, verified in constant time.

A key looks like `mg-<id>-<secret>`: the id (public, shown in listings) finds the row,
the whole key's SHA-256 is compared. The secret has 192 bits of entropy, so a fast
hash is safe here (as with GitHub or Stripe tokens); passwords, which people choose,
get a slow hash instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "mg-"
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key_id, full secret to show once, hash to store)."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
    secret = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(24)}"
    return key_id, secret, hash_key(secret)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The id part of a presented key, or None if it is not shaped like one of ours."""
    if not secret.startswith(KEY_PREFIX):
        return None
    key_id, sep, rest = secret[len(KEY_PREFIX) :].partition("-")
    if not sep or not rest or not key_id:
        return None
    return key_id


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(secret), stored_hash)
