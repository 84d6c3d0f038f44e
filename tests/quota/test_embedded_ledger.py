"""The embedded ledger: atomic reservations, exact and idempotent settlement, durability across restarts."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import WindowKey, utc_day
from meshgate.store.engine import migrate

KEY = WindowKey(1, "m", "api", "2026-11-25")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    migrate(f"sqlite:///{path}")
    return path


async def test_reserve_is_all_or_nothing_within_the_limit(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    first = await ledger.reserve("r1", KEY, 100, 60, 60, None)
    assert (first.amount, first.remaining) == (60, 40)
    refused = await ledger.reserve("r2", KEY, 100, 50, 50, None)
    assert refused.reservation is None and refused.amount == 0 and refused.remaining == 40
    partial = await ledger.reserve("r3", KEY, 100, 10, 1000, None)  # "as much as is free, at least 10"
    assert partial.amount == 40
    assert (await ledger.window(KEY)).reserved == 100


async def test_settle_charges_usage_releases_the_rest_once(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    grant = await ledger.reserve("r1", KEY, 100, 80, 80, "key1")
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 10, 15) == 25
    assert await ledger.settle(grant.reservation, 10, 15) == 0  # idempotent per request id
    window = await ledger.window(KEY)
    assert (window.used, window.reserved) == (25, 0)


async def test_settle_never_charges_past_the_reservation(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 20, 50) == 30
    assert (await ledger.window(KEY)).used == 30


async def test_failed_request_holds_and_charges_nothing(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 0, 0, "upstream_error") == 0
    window = await ledger.window(KEY)
    assert (window.used, window.reserved) == (0, 0)


async def test_concurrent_random_workload_never_overspends(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    limit = 5_000
    charged: list[int] = []

    async def request(i: int) -> None:
        want = random.randint(10, 400)
        grant = await ledger.reserve(f"r{i}", KEY, limit, want, want, None)
        if grant.reservation is None:
            return
        await asyncio.sleep(random.random() / 100)
        charged.append(await ledger.settle(grant.reservation, random.randint(0, want // 2), random.randint(0, want)))

    await asyncio.gather(*(request(i) for i in range(1000)))
    window = await ledger.window(KEY)
    assert window.reserved == 0 and window.used == sum(charged) <= limit
    await ledger.close()
    # a restarted gateway reads the settled usage back: a crash loses no settled tokens
    reopened = EmbeddedLedger(db)
    assert (await reopened.window(KEY)).used == sum(charged)


async def test_reservations_do_not_survive_a_restart(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    await ledger.reserve("r1", KEY, 100, 90, 90, None)
    # the process dies here: nothing of the reservation was durable, so nothing stays stuck
    reopened = EmbeddedLedger(db)
    window = await reopened.window(KEY)
    assert (window.used, window.reserved) == (0, 0)
    assert (await reopened.reserve("r2", KEY, 100, 100, 100, None)).amount == 100


async def test_windows_are_separate_per_day_bucket_model_account(db: Path) -> None:
    ledger = EmbeddedLedger(db)
    for key in (
        KEY,
        WindowKey(1, "m", "api", "2026-11-26"),
        WindowKey(1, "m", "chat", "2026-11-25"),
        WindowKey(1, "other", "api", "2026-11-25"),
        WindowKey(2, "m", "api", "2026-11-25"),
    ):
        assert (await ledger.reserve(f"r-{key}", key, 100, 100, 100, None)).amount == 100


def test_utc_day_format() -> None:
    day = utc_day()
    assert len(day) == 10 and day[4] == "-" and day[7] == "-"


async def test_settled_usage_reaches_the_database_file_off_the_event_loop(db: Path, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    ledger = EmbeddedLedger(db)
    for i in range(50):
        grant = await ledger.reserve(f"r{i}", KEY, 10_000, 10, 10, None)
        assert grant.reservation is not None
        await ledger.settle(grant.reservation, 4, 6)
    await asyncio.sleep(1.5)  # the checkpointer thread copies the WAL into the main file each second
    copy = tmp_path / "main-file-only.db"
    shutil.copy(db, copy)  # the database file alone, without its -wal
    (count,) = sqlite3.connect(copy).execute("SELECT COUNT(*) FROM usage_events").fetchone()
    assert count == 50
    await ledger.close()
