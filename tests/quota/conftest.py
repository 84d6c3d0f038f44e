"""Ledger fixtures: a migrated database, and ledgers that are shut down (or "killed") after each test.

Embedded ledgers (`ledger_on`) on the SQLite file `db`; Redis ledgers (`make_redis`) on this test's
Redis key prefix with their history in `db` too (`db_url`). Both write the same tables: `history()`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Budget, BudgetKey, Grant, Reservation, WindowKey
from meshgate.quota.redis_ledger import RedisLedger
from meshgate.store.engine import migrate
from tests.conftest import TEST_REDIS_URL, require_redis

REDIS = TEST_REDIS_URL
KEY = WindowKey(1, "m", "api", "2026-11-25")
BKEY = BudgetKey("key1", "2026-11-25T00:00Z")


def budget(limit: int, key: BudgetKey = BKEY) -> Budget:
    return Budget(key, limit, 1_700_000_000.0)


def held(grant: Grant) -> Reservation:
    assert grant.reservation is not None
    return grant.reservation


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_url(db: Path) -> str:
    return f"sqlite:///{db}"


def history(url: str) -> dict[str, Any]:
    """What is durable in a ledger's database: events by request id, window and budget totals."""
    engine = create_engine(url)
    with engine.connect() as conn:
        result = {
            "events": {
                r.request_id: (r.total_tokens, r.outcome)
                for r in conn.execute(text("SELECT request_id, total_tokens, outcome FROM usage_events"))
            },
            "windows": {tuple(r[:4]): r[4] for r in conn.execute(text("SELECT * FROM quota_usage"))},
            "budgets": {(r[0], r[1]): r[2] for r in conn.execute(text("SELECT * FROM key_budget_usage"))},
        }
    engine.dispose()
    return result


def window_used(url: str, key: WindowKey = KEY) -> int:
    row = (key.account_id, key.model, key.bucket, key.day)
    return int(history(url)["windows"].get(row, 0))


# ---------------------------------------------------------------- the embedded ledger


def crash(ledger: EmbeddedLedger) -> None:
    """What `kill -9` leaves of a ledger: what was committed, nothing more (its lock released, as by the OS)."""
    ledger._closed = True
    if ledger._progress_timer is not None:
        ledger._progress_timer.cancel()
    ledger._writer.abandon()
    ledger._reader.close()
    ledger._checkpointer.stop()
    ledger._lock.release()


@pytest.fixture
def ledger_on() -> Iterator[Callable[..., EmbeddedLedger]]:
    """Make ledgers; whatever a test left open is "killed" at its end (threads stopped, lock released)."""
    made: list[EmbeddedLedger] = []

    def make(path: Path, **kwargs: object) -> EmbeddedLedger:
        ledger = EmbeddedLedger(path, **kwargs)  # type: ignore[arg-type]
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        if not ledger._closed:
            crash(ledger)


# ---------------------------------------------------------------- the Redis ledger


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()  # skipped without Redis; with CI=true (make test), failed
    name = f"mgtest:{os.urandom(6).hex()}:"
    yield name
    wipe(name)


def wipe(prefix: str) -> None:
    """What a Redis restart without persistence does to this test's keys."""
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def make_redis(prefix: str, db_url: str) -> AsyncIterator[Callable[..., RedisLedger]]:
    """New ledgers (gateway processes) on this test's Redis prefix and history; closed at the end."""
    made: list[RedisLedger] = []

    def factory(**options: Any) -> RedisLedger:
        options.setdefault("database", db_url)
        ledger = RedisLedger(REDIS, prefix=prefix, **options)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        await ledger.close()
