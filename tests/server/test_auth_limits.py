"""Authentication cannot be made to grow memory or flush its caches: key shape, bounded caches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from meshgate.accounts.keys import KEY_LENGTH, key_id_of, new_key
from meshgate.protocol.errors import ApiError
from meshgate.server import auth
from meshgate.server.auth import KeyAuthenticator, RecentlyUnknown


@pytest.mark.parametrize(
    "presented",
    [
        "mg-abcdefghij-" + "A" * 31,  # a secret one character short
        "mg-abcdefghij-" + "A" * 33,
        "mg-abcdefghi-" + "A" * 33,  # a short id, same total length
        "mg-abcdefghil-" + "A" * 32,  # "l" is not in the id alphabet
        "mg-ABCDEFGHIJ-" + "A" * 32,
        "mg-abcdefghij-" + "A" * 31 + "=",
        "mg-abcdefghij_" + "A" * 32,
        "sk-abcdefghij-" + "A" * 32,
        "mg-" + "a" * (1 << 20) + "-x",  # the megabyte ids of the memory attack
    ],
)
def test_keys_must_have_our_exact_shape(presented: str) -> None:
    assert key_id_of(presented) is None


def test_every_new_key_has_the_shape() -> None:
    for _ in range(200):
        key_id, secret, _ = new_key()
        assert len(secret) == KEY_LENGTH and key_id_of(secret) == key_id


def test_recently_unknown_expires_and_evicts_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    unknown = RecentlyUnknown(ttl=2.0, limit=3)
    for key_id in ("a", "b", "c", "d"):
        unknown.add(key_id)
    assert len(unknown) == 3 and "a" not in unknown  # full: the oldest went, not everything
    assert "b" in unknown and "d" in unknown
    now[0] += 2.5
    assert "b" not in unknown  # expired
    unknown.add("e")  # expired ones leave as new ones come
    assert len(unknown) == 1 and "e" in unknown


@dataclass
class _Store:
    """Knows no key; counts the lookups the authenticator makes."""

    lookups: int = 0

    def get_key(self, key_id: str) -> Any:
        self.lookups += 1
        return None

    def get_account(self, account_id: int) -> Any:
        return None


def _scope(authorization: bytes) -> dict[str, Any]:
    return {"headers": [(b"authorization", authorization)]}


async def test_malformed_and_huge_keys_never_reach_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Store()
    authenticator = KeyAuthenticator(store)  # type: ignore[arg-type]
    parsed: list[int] = []  # the length of every secret that got as far as being parsed

    def recording_key_id_of(secret: str) -> str | None:
        parsed.append(len(secret))
        return key_id_of(secret)

    monkeypatch.setattr(auth, "key_id_of", recording_key_id_of)
    for raw in (b"Bearer " + b"x" * (64 << 20), b"Bearer mg-" + b"a" * 100_000 + b"-x", b"Bearer mg-short-x"):
        with pytest.raises(ApiError) as refused:
            await authenticator.authenticate(_scope(raw))
        assert refused.value.status == 401
    assert parsed == [len("mg-short-x")]  # the long ones were refused by length, before any decoding or parsing
    assert store.lookups == 0 and len(authenticator._unknown) == 0


async def test_unknown_ids_are_looked_up_once_and_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_MAX_NEGATIVE", 50)
    store = _Store()
    authenticator = KeyAuthenticator(store)  # type: ignore[arg-type]
    ids = [new_key()[1] for _ in range(200)]
    for secret in ids:
        for _ in range(3):  # the same unknown key again: no second lookup
            with pytest.raises(ApiError):
                await authenticator.authenticate(_scope(b"Bearer " + secret.encode()))
    assert store.lookups == 200
    assert len(authenticator._unknown) == 50
    assert ids[-1][3:13] in authenticator._unknown  # the newest stay; flooding cannot flush them
