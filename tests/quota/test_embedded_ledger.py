"""The embedded ledger: durability across restarts, and what it keeps in memory.

The behaviours every ledger shares are in test_ledger_contract.py, run on this ledger too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import BudgetKey, WindowUsage, utc_day
from tests.quota.conftest import BKEY, KEY, budget, crash, held

MakeLedger = Callable[..., EmbeddedLedger]


async def test_reservations_do_not_survive_a_restart(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    await ledger.reserve("r1", KEY, 100, 90, 90, None)
    crash(ledger)  # the process dies here: nothing of the reservation was durable, so nothing stays stuck
    reopened = ledger_on(db)
    window = await reopened.window(KEY)
    assert (window.used, window.reserved) == (0, 0)
    assert (await reopened.reserve("r2", KEY, 100, 100, 100, None)).amount == 100


def test_utc_day_format() -> None:
    day = utc_day()
    assert len(day) == 10 and day[4] == "-" and day[7] == "-"


async def test_settled_usage_reaches_the_database_file_off_the_event_loop(
    db: Path, ledger_on: MakeLedger, tmp_path: Path
) -> None:
    import shutil

    ledger = ledger_on(db)
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


# -- key budgets


async def test_budget_survives_a_restart_and_a_settled_id_charges_nothing_after_it(
    db: Path, ledger_on: MakeLedger
) -> None:
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 1000, 100, 100, "key1", budget(300))
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 40, 60) == 100
    await ledger.reserve("r2", KEY, 1000, 150, 150, "key1", budget(300))  # in flight when the process dies
    crash(ledger)  # no close(): a settle that returned is committed
    reopened = ledger_on(db)
    assert await reopened.budget_window(BKEY) == WindowUsage(100, 0)
    assert (await reopened.reserve("r3", KEY, 1000, 201, 201, "key1", budget(300))).refused_by == "budget"
    again = await reopened.reserve("r1", KEY, 1000, 100, 100, "key1", budget(300))  # a replayed settlement
    assert again.reservation is not None
    assert await reopened.settle(again.reservation, 40, 60) == 0
    assert await reopened.budget_window(BKEY) == WindowUsage(100, 0)
    assert await reopened.window(KEY) == WindowUsage(100, 0)


async def test_a_past_period_is_dropped_from_memory_and_reads_back_exactly(db: Path, ledger_on: MakeLedger) -> None:
    # test_a_new_period_starts_from_zero (test_ledger_contract.py), plus where this ledger keeps the periods
    ledger = ledger_on(db)
    await ledger.settle(held(await ledger.reserve("r1", KEY, 10_000, 100, 100, "key1", budget(100))), 100, 0)
    assert BKEY in ledger._budgets
    following = BudgetKey("key1", "2026-11-26T00:00Z")
    assert (await ledger.reserve("r2", KEY, 10_000, 100, 100, "key1", budget(100, following))).amount == 100
    assert BKEY not in ledger._budgets  # the past period, idle, is dropped once the key's new one is used
    assert await ledger.budget_window(BKEY) == WindowUsage(100, 0)  # and reads back from the database


@pytest.mark.timeout(10)  # the bug this guards against spun the event loop forever
async def test_a_window_whose_read_is_already_done_is_used_at_once(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    loop = asyncio.get_running_loop()

    def read_done_already(sql: str, params: tuple[object, ...]) -> asyncio.Future[int]:
        done: asyncio.Future[int] = loop.create_future()
        done.set_result(7)  # awaiting it does not yield, and its done-callbacks run only on a later turn
        return done

    ledger._reader.used = read_done_already  # type: ignore[method-assign]
    grants = await asyncio.gather(*(ledger.reserve(f"r{i}", KEY, 100, 1, 1, None) for i in range(40)))
    assert all(g.reservation is not None for g in grants)
    assert await ledger.window(KEY) == WindowUsage(7, 40)
