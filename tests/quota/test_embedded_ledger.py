"""The embedded ledger: atomic reservations, exact and idempotent settlement, durability across restarts."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Budget, BudgetKey, WindowKey, WindowUsage, utc_day
from tests.quota.conftest import crash

MakeLedger = Callable[..., EmbeddedLedger]

KEY = WindowKey(1, "m", "api", "2026-11-25")


async def test_reserve_is_all_or_nothing_within_the_limit(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    first = await ledger.reserve("r1", KEY, 100, 60, 60, None)
    assert (first.amount, first.remaining) == (60, 40)
    refused = await ledger.reserve("r2", KEY, 100, 50, 50, None)
    assert refused.reservation is None and refused.amount == 0 and refused.remaining == 40
    partial = await ledger.reserve("r3", KEY, 100, 10, 1000, None)  # "as much as is free, at least 10"
    assert partial.amount == 40
    assert (await ledger.window(KEY)).reserved == 100


async def test_settle_charges_usage_releases_the_rest_once(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 100, 80, 80, "key1")
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 10, 15) == 25
    assert await ledger.settle(grant.reservation, 10, 15) == 0  # idempotent per request id
    window = await ledger.window(KEY)
    assert (window.used, window.reserved) == (25, 0)


async def test_settle_charges_the_whole_usage_even_above_the_reservation(db: Path, ledger_on: MakeLedger) -> None:
    # the server decides what was really used; the window may go over its limit by that one request
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 20, 100) == 120
    window = await ledger.window(KEY)
    assert (window.used, window.reserved) == (120, 0)
    assert (await ledger.reserve("r2", KEY, 100, 1, 1, None)).reservation is None


async def test_failed_request_holds_and_charges_nothing(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 0, 0, "upstream_error") == 0
    window = await ledger.window(KEY)
    assert (window.used, window.reserved) == (0, 0)


async def test_concurrent_random_workload_never_overspends(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
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
    reopened = ledger_on(db)
    assert (await reopened.window(KEY)).used == sum(charged)


async def test_reservations_do_not_survive_a_restart(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    await ledger.reserve("r1", KEY, 100, 90, 90, None)
    crash(ledger)  # the process dies here: nothing of the reservation was durable, so nothing stays stuck
    reopened = ledger_on(db)
    window = await reopened.window(KEY)
    assert (window.used, window.reserved) == (0, 0)
    assert (await reopened.reserve("r2", KEY, 100, 100, 100, None)).amount == 100


async def test_windows_are_separate_per_day_bucket_model_account(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
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

BKEY = BudgetKey("key1", "2026-11-25T00:00Z")


def budget(limit: int, key: BudgetKey = BKEY) -> Budget:
    return Budget(key, limit, 1_700_000_000.0)


async def test_budget_refusal_leaves_the_window_untouched(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    first = await ledger.reserve("r1", KEY, 1000, 60, 60, "key1", budget(100))
    assert (first.amount, first.remaining, first.refused_by) == (60, 40, None)  # min(940, 40)
    refused = await ledger.reserve("r2", KEY, 1000, 50, 50, "key1", budget(100))
    assert (refused.amount, refused.remaining, refused.refused_by, refused.reservation) == (0, 40, "budget", None)
    assert await ledger.window(KEY) == WindowUsage(0, 60)
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 60)
    partial = await ledger.reserve("r3", KEY, 1000, 10, 500, "key1", budget(100))  # as much as the budget has
    assert (partial.amount, partial.remaining) == (40, 0)
    assert partial.reservation is not None and partial.reservation.budget == budget(100)
    assert await ledger.window(KEY) == WindowUsage(0, 100)
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 100)


async def test_window_refusal_leaves_the_budget_untouched(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    await ledger.reserve("r1", KEY, 100, 70, 70, None)  # another key of the account, no budget
    refused = await ledger.reserve("r2", KEY, 100, 50, 50, "key1", budget(1000))
    assert (refused.amount, refused.remaining, refused.refused_by) == (0, 30, "window")
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 0)
    assert await ledger.window(KEY) == WindowUsage(0, 70)
    # both short: the window is named
    both = await ledger.reserve("r3", KEY, 100, 50, 50, "key1", budget(20))
    assert (both.remaining, both.refused_by) == (20, "window")
    granted = await ledger.reserve("r4", KEY, 100, 30, 30, "key1", budget(1000))
    assert (granted.amount, granted.remaining, granted.refused_by) == (30, 0, None)
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 30)


async def test_settlement_charges_window_and_budget_once(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 1000, 80, 80, "key1", budget(500))
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 10, 15) == 25
    assert await ledger.settle(grant.reservation, 10, 15) == 0  # idempotent: charges neither again
    assert await ledger.window(KEY) == WindowUsage(25, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(25, 0)
    failed = await ledger.reserve("r2", KEY, 1000, 80, 80, "key1", budget(500))
    assert failed.reservation is not None
    assert await ledger.settle(failed.reservation, 0, 0, "upstream_error") == 0
    assert await ledger.budget_window(BKEY) == WindowUsage(25, 0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT api_key_id, period, used FROM key_budget_usage").fetchall() == [
            ("key1", "2026-11-25T00:00Z", 25)
        ]


async def test_settle_above_the_reservation_charges_the_budget_the_whole_amount(
    db: Path, ledger_on: MakeLedger
) -> None:
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 1000, 50, 50, "key1", budget(100))
    assert grant.reservation is not None
    assert await ledger.settle(grant.reservation, 30, 90) == 120
    assert await ledger.window(KEY) == WindowUsage(120, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(120, 0)  # over its limit by this one request
    refused = await ledger.reserve("r2", KEY, 1000, 1, 1, "key1", budget(100))
    assert (refused.remaining, refused.refused_by) == (0, "budget")


async def test_one_budget_spans_the_windows_of_every_model(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    other = WindowKey(1, "other", "api", "2026-11-25")
    a = await ledger.reserve("r1", KEY, 1000, 60, 60, "key1", budget(100))
    b = await ledger.reserve("r2", other, 1000, 60, 60, "key1", budget(100))
    assert a.amount == 60 and (b.amount, b.refused_by) == (0, "budget")
    c = await ledger.reserve("r3", other, 1000, 10, 60, "key1", budget(100))
    assert c.amount == 40 and c.reservation is not None and a.reservation is not None
    await ledger.settle(a.reservation, 50, 0)
    await ledger.settle(c.reservation, 20, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(70, 0)
    assert (await ledger.window(KEY)).used == 50 and (await ledger.window(other)).used == 20


async def test_fifty_concurrent_reserves_take_exactly_the_budget(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    grants = await asyncio.gather(
        *(ledger.reserve(f"r{i}", KEY, 10_000, 30, 30, "key1", budget(1000)) for i in range(50))
    )
    granted = [g for g in grants if g.reservation is not None]
    assert len(granted) == 33  # 33 x 30 = 990 <= 1000 < 34 x 30
    assert {g.refused_by for g in grants if g.reservation is None} == {"budget"}
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 990)
    assert await ledger.window(KEY) == WindowUsage(0, 990)  # the 17 refused left nothing on the window
    charges = await asyncio.gather(*(ledger.settle(g.reservation, 10, 20) for g in granted if g.reservation))
    assert sum(charges) == 990
    assert await ledger.budget_window(BKEY) == WindowUsage(990, 0)


async def test_concurrent_workload_never_overspends_budget_nor_window(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    window_limit, budget_limit = 6_000, 2_500
    charged: dict[str | None, list[int]] = {"key1": [], None: []}
    refusals = {"window": 0, "budget": 0}

    async def client(i: int) -> None:
        # half the clients use the budgeted key, the others the account's unbudgeted one: both limits bind
        api_key = "key1" if i % 2 else None
        for round_ in range(20):
            want = random.randint(10, 200)
            limits = budget(budget_limit) if api_key else None
            grant = await ledger.reserve(f"r{i}-{round_}", KEY, window_limit, want, want, api_key, limits)
            if grant.reservation is None:
                assert grant.refused_by is not None
                refusals[grant.refused_by] += 1
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(random.random() / 200)
            used = await ledger.settle(grant.reservation, random.randint(0, want // 2), random.randint(0, want // 2))
            charged[api_key].append(used)

    await asyncio.gather(*(client(i) for i in range(50)))
    spent_by_key, spent_by_others = sum(charged["key1"]), sum(charged[None])
    assert await ledger.budget_window(BKEY) == WindowUsage(spent_by_key, 0)
    assert await ledger.window(KEY) == WindowUsage(spent_by_key + spent_by_others, 0)
    assert spent_by_key <= budget_limit and spent_by_key + spent_by_others <= window_limit
    assert refusals["window"] > 0 and refusals["budget"] > 0  # both limits were reached
    await ledger.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT used FROM key_budget_usage WHERE api_key_id='key1'").fetchone() == (spent_by_key,)


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


async def test_a_new_period_starts_from_zero(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db)
    grant = await ledger.reserve("r1", KEY, 10_000, 100, 100, "key1", budget(100))
    assert grant.reservation is not None
    await ledger.settle(grant.reservation, 100, 0)
    assert (await ledger.reserve("r2", KEY, 10_000, 1, 1, "key1", budget(100))).refused_by == "budget"
    following = BudgetKey("key1", "2026-11-26T00:00Z")
    fresh = await ledger.reserve("r3", KEY, 10_000, 100, 100, "key1", budget(100, following))
    assert (fresh.amount, fresh.remaining) == (100, 0)
    assert await ledger.budget_window(following) == WindowUsage(0, 100)
    # the past period was dropped from memory (idle) and reads back exactly from the database
    assert BKEY not in ledger._budgets
    assert await ledger.budget_window(BKEY) == WindowUsage(100, 0)
    # another key's budget in the same period is its own
    assert await ledger.budget_window(BudgetKey("key2", "2026-11-25T00:00Z")) == WindowUsage(0, 0)


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
