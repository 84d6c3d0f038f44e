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


class SecretShape:
    """A credential's shape: `<prefix><id>-<secret>`, the id 10 characters of an unambiguous alphabet,
    the secret 192 random bits as 32 URL-safe base64 characters. API keys (`mg-`) and worker tokens
    (`mgw-`, `worker_tokens.py`) are two shapes, so neither can pass for the other."""

    _ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
    _ID_LENGTH = 10
    _SECRET_BYTES = 24  # token_urlsafe(24): 32 characters of the URL-safe base64 alphabet

    def __init__(self, prefix: str) -> None:
        secret_chars = self._SECRET_BYTES * 4 // 3
        self.prefix = prefix
        self.length = len(prefix) + self._ID_LENGTH + 1 + secret_chars
        self._shape = re.compile(
            rf"{re.escape(prefix)}([{self._ALPHABET}]{{{self._ID_LENGTH}}})-[A-Za-z0-9_-]{{{secret_chars}}}"
        )

    def new(self) -> tuple[str, str, str]:
        """A fresh credential: (its id, the whole secret to show once, the hash to store)."""
        credential_id = "".join(secrets.choice(self._ALPHABET) for _ in range(self._ID_LENGTH))
        secret = f"{self.prefix}{credential_id}-{secrets.token_urlsafe(self._SECRET_BYTES)}"
        return credential_id, secret, hash_key(secret)

    def id_of(self, secret: str) -> str | None:
        """The id part of a presented credential, or None if it is not shaped exactly like one.

        Anything else is refused before any lookup or cache entry: the length check first,
        so a megabyte of junk costs no more than a well-formed key.
        """
        if len(secret) != self.length:
            return None
        match = self._shape.fullmatch(secret)
        return match.group(1) if match else None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


API_KEYS = SecretShape("mg-")
KEY_PREFIX = API_KEYS.prefix
KEY_LENGTH = API_KEYS.length
new_key = API_KEYS.new  # (key_id, full secret to show once, hash to store)
key_id_of = API_KEYS.id_of


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(secret), stored_hash)
