"""Passwords: argon2id hashes (argon2-cffi), verified off the event loop by the callers.

People choose passwords, so they get a slow, memory-hard hash (RFC 9106's second
recommended profile: 64 MiB, 3 passes), unlike API keys (`keys.py`), whose 192 random
bits make a fast hash safe. A name that has no account is checked against a dummy hash,
so a login takes as long whether or not the name exists.
"""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MAX_BYTES = 1024  # argon2 takes any length; this bounds the work a request can ask for

_hasher = PasswordHasher()  # argon2id, time_cost=3, memory_cost=64 MiB, parallelism=4
# Each hash holds 64 MiB while it runs: at most two at once bounds the memory a burst of logins can take.
_slots = threading.BoundedSemaphore(2)
_DUMMY_HASH = _hasher.hash("meshgate: a name with no account")


class PasswordError(ValueError):
    """A password that cannot be used; the message says why."""


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password needs at least {MIN_LENGTH} characters")
    if len(password.encode()) > MAX_BYTES:
        raise PasswordError(f"the password is longer than {MAX_BYTES} bytes")


def hash_password(password: str) -> str:
    check_new_password(password)
    with _slots:
        return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True if the password matches; a missing hash costs the same time and is False."""
    if len(password.encode()) > MAX_BYTES:
        return False
    with _slots:
        try:
            return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)
