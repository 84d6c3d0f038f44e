"""API key secrets: generated once, stored as a hash, verified in constant time.

A key looks like `mg-<id>-<secret>`: the id (public, shown in listings) finds the row,
the whole key's SHA-256 is compared. The secret has 192 bits of entropy, so a fast
hash is safe here (as with GitHub or Stripe tokens); passwords, which people choose,
get a slow hash instead.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "mg-"
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
_ID_LENGTH = 10
_SECRET_BYTES = 24  # token_urlsafe(24): 32 characters of the URL-safe base64 alphabet
KEY_LENGTH = len(KEY_PREFIX) + _ID_LENGTH + 1 + _SECRET_BYTES * 4 // 3
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}([{_ID_ALPHABET}]{{{_ID_LENGTH}}})-[A-Za-z0-9_-]{{{_SECRET_BYTES * 4 // 3}}}")


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key_id, full secret to show once, hash to store)."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
    secret = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(_SECRET_BYTES)}"
    return key_id, secret, hash_key(secret)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The id part of a presented key, or None if it is not shaped exactly like one of ours.

    Anything else is refused before any lookup or cache entry: the length check first,
    so a megabyte of junk costs no more than a well-formed key.
    """
    if len(secret) != KEY_LENGTH:
        return None
    match = _KEY_SHAPE.fullmatch(secret)
    return match.group(1) if match else None


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(secret), stored_hash)
