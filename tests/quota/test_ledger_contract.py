"""The `Ledger` contract, run on each implementation: the embedded ledger (SQLite) and the Redis ledger.

Every test gets a fresh state of its kind (an SQLite file; for Redis also a key prefix of its own,
with its history in such a file). Both write the same history tables, read back by `durable()`.
What only one implementation does stays in test_embedded_ledger.py or test_redis_ledger.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshgate.quota.ledger import BudgetKey, Ledger, WindowKey, WindowUsage
from tests.quota.conftest import BKEY, KEY, budget, held, history, window_used


@dataclass(frozen=True)
class Ledgers:
    """Ledgers of one kind on this test's state."""

    new: Callable[[], Ledger]  # called again: a restarted gateway (embedded) or another process (Redis)
    db_url: str  # the database the history goes to

    def durable(self) -> dict[str, Any]:
        """The history: {"events": {request id: (tokens, outcome)}, "windows": ..., "budgets": ...}."""
        return history(self.db_url)

    def durable_window(self, key: WindowKey = KEY) -> int:
        return window_used(self.db_url, key)


@pytest.fixture(params=["embedded", "redis"])
def ledgers(request: pytest.FixtureRequest, db: Path, db_url: str) -> Ledgers:
    # The other kind's fixtures are not set up at all: the embedded tests need no Redis.
    if request.param == "embedded":
        ledger_on = request.getfixturevalue("ledger_on")
        return Ledgers(lambda: ledger_on(db), db_url)
    return Ledgers(request.getfixturevalue("make_redis"), db_url)


async def test_reserve_is_all_or_nothing_within_the_limit(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    first = await ledger.reserve("r1", KEY, 100, 60, 60, None)
    assert (first.amount, first.remaining) == (60, 40)
    refused = await ledger.reserve("r2", KEY, 100, 50, 50, None)
    assert refused.reservation is None and refused.amount == 0 and refused.remaining == 40
    assert refused.refused_by == "window"
    partial = await ledger.reserve("r3", KEY, 100, 10, 1000, None)  # "as much as is free, at least 10"
    assert partial.amount == 40
    assert (await ledger.window(KEY)).reserved == 100
    full = await ledger.reserve("r4", KEY, 100, 0, 10, None)  # free <= 0 refuses even a minimum of 0
    assert (full.amount, full.refused_by) == (0, "window")


async def test_a_request_id_holding_a_reservation_is_refused(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    assert (await ledger.reserve("r1", KEY, 100, 10, 10, None)).amount == 10
    again = await ledger.reserve("r1", KEY, 100, 10, 10, None)
    assert (again.amount, again.refused_by, again.remaining) == (0, "window", 90)
    assert await ledger.window(KEY) == WindowUsage(0, 10)


async def test_settle_returns_once_the_charge_is_in_the_history(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    for i in range(50):
        grant = await ledger.reserve(f"r{i}", KEY, 10_000, 10, 10, None)
        assert await ledger.settle(held(grant), 4, 6) == 10
        assert len(ledgers.durable()["events"]) == i + 1
    assert ledgers.durable_window() == 500


async def test_settle_charges_usage_releases_the_rest_once(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    grant = await ledger.reserve("r1", KEY, 100, 80, 80, "key1")
    assert await ledger.settle(held(grant), 10, 15) == 25
    assert await ledger.settle(held(grant), 10, 15) == 0  # idempotent per request id
    assert await ledger.window(KEY) == WindowUsage(25, 0)
    assert ledgers.durable()["events"] == {"r1": (25, "ok")} and ledgers.durable_window() == 25


async def test_settle_charges_the_whole_usage_even_above_the_reservation(ledgers: Ledgers) -> None:
    # the server decides what was really used; the window may go over its limit by that one request
    ledger = ledgers.new()
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert await ledger.settle(held(grant), 20, 100) == 120
    assert await ledger.window(KEY) == WindowUsage(120, 0)
    assert (await ledger.reserve("r2", KEY, 100, 1, 1, None)).reservation is None


async def test_failed_request_holds_and_charges_nothing(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert await ledger.settle(held(grant), 0, 0, "upstream_error") == 0
    assert await ledger.window(KEY) == WindowUsage(0, 0)
    assert ledgers.durable()["events"] == {}
    zero = await ledger.reserve("r2", KEY, 100, 30, 30, None)
    assert await ledger.settle(held(zero), -5, 0) == 0  # "ok" with nothing used is recorded, as 0
    assert ledgers.durable()["events"] == {"r2": (0, "ok")}


async def test_concurrent_random_workload_never_overspends(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    limit = 5_000
    charged: list[int] = []

    async def request(i: int) -> None:
        want = random.randint(10, 400)
        grant = await ledger.reserve(f"r{i}", KEY, limit, want, want, None)
        if grant.reservation is None:
            return
        await asyncio.sleep(random.random() / 100)
        # at most the reservation: a charge above it may take the window over its limit (allowed)
        charged.append(
            await ledger.settle(grant.reservation, random.randint(0, want // 2), random.randint(0, want // 2))
        )

    await asyncio.gather(*(request(i) for i in range(1000)))
    window = await ledger.window(KEY)
    assert window.reserved == 0 and window.used == sum(charged) <= limit
    await ledger.close()
    assert ledgers.durable_window() == sum(charged)  # the history agrees
    # a restarted gateway (embedded) or another gateway process (Redis) reads the settled usage back
    assert (await ledgers.new().window(KEY)).used == sum(charged)


async def test_windows_are_separate_per_day_bucket_model_account(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    for key in (
        KEY,
        WindowKey(1, "m", "api", "2026-11-26"),
        WindowKey(1, "m", "chat", "2026-11-25"),
        WindowKey(1, "other", "api", "2026-11-25"),
        WindowKey(2, "m", "api", "2026-11-25"),
        WindowKey(1, "m:api", "api", "2026-11-25"),  # a colon in a model name makes no other window's key
    ):
        assert (await ledger.reserve(f"r-{key}", key, 100, 100, 100, None)).amount == 100


# ---------------------------------------------------------------- key budgets


async def test_budget_refusal_leaves_the_window_untouched(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    first = await ledger.reserve("r1", KEY, 1000, 60, 60, "key1", budget(100))
    assert (first.amount, first.remaining, first.refused_by) == (60, 40, None)  # min(940, 40)
    refused = await ledger.reserve("r2", KEY, 1000, 50, 50, "key1", budget(100))
    assert (refused.amount, refused.remaining, refused.refused_by, refused.reservation) == (0, 40, "budget", None)
    assert await ledger.window(KEY) == WindowUsage(0, 60)
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 60)
    partial = await ledger.reserve("r3", KEY, 1000, 10, 500, "key1", budget(100))  # as much as the budget has
    assert (partial.amount, partial.remaining) == (40, 0)
    assert held(partial).budget == budget(100)
    assert await ledger.window(KEY) == WindowUsage(0, 100)
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 100)


async def test_window_refusal_leaves_the_budget_untouched(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    await ledger.reserve("r1", KEY, 100, 70, 70, None)  # another key of the account, no budget
    refused = await ledger.reserve("r2", KEY, 100, 50, 50, "key1", budget(1000))
    assert (refused.amount, refused.remaining, refused.refused_by) == (0, 30, "window")
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 0)
    assert await ledger.window(KEY) == WindowUsage(0, 70)
    both = await ledger.reserve("r3", KEY, 100, 50, 50, "key1", budget(20))  # both short: the window is named
    assert (both.remaining, both.refused_by) == (20, "window")
    granted = await ledger.reserve("r4", KEY, 100, 30, 30, "key1", budget(1000))
    assert (granted.amount, granted.remaining, granted.refused_by) == (30, 0, None)
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 30)


async def test_settlement_charges_window_and_budget_once(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    grant = await ledger.reserve("r1", KEY, 1000, 80, 80, "key1", budget(500))
    assert await ledger.settle(held(grant), 10, 15) == 25
    assert await ledger.settle(held(grant), 10, 15) == 0  # idempotent: charges neither again
    assert await ledger.window(KEY) == WindowUsage(25, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(25, 0)
    failed = await ledger.reserve("r2", KEY, 1000, 80, 80, "key1", budget(500))
    assert await ledger.settle(held(failed), 0, 0, "upstream_error") == 0
    assert await ledger.budget_window(BKEY) == WindowUsage(25, 0)
    assert ledgers.durable()["budgets"] == {("key1", "2026-11-25T00:00Z"): 25}


async def test_settle_above_the_reservation_charges_the_budget_the_whole_amount(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    grant = await ledger.reserve("r1", KEY, 1000, 50, 50, "key1", budget(100))
    assert await ledger.settle(held(grant), 30, 90) == 120
    assert await ledger.window(KEY) == WindowUsage(120, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(120, 0)  # over its limit by this one request
    refused = await ledger.reserve("r2", KEY, 1000, 1, 1, "key1", budget(100))
    assert (refused.remaining, refused.refused_by) == (0, "budget")


async def test_one_budget_spans_the_windows_of_every_model(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    other = WindowKey(1, "other", "api", "2026-11-25")
    a = await ledger.reserve("r1", KEY, 1000, 60, 60, "key1", budget(100))
    b = await ledger.reserve("r2", other, 1000, 60, 60, "key1", budget(100))
    assert a.amount == 60 and (b.amount, b.refused_by) == (0, "budget")
    c = await ledger.reserve("r3", other, 1000, 10, 60, "key1", budget(100))
    assert c.amount == 40
    await ledger.settle(held(a), 50, 0)
    await ledger.settle(held(c), 20, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(70, 0)
    assert (await ledger.window(KEY)).used == 50 and (await ledger.window(other)).used == 20


async def test_fifty_concurrent_reserves_take_exactly_the_budget(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    grants = await asyncio.gather(
        *(ledger.reserve(f"r{i}", KEY, 10_000, 30, 30, "key1", budget(1000)) for i in range(50))
    )
    granted = [g for g in grants if g.reservation is not None]
    assert len(granted) == 33  # 33 x 30 = 990 <= 1000 < 34 x 30
    assert {g.refused_by for g in grants if g.reservation is None} == {"budget"}
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 990)
    assert await ledger.window(KEY) == WindowUsage(0, 990)  # the 17 refused left nothing on the window
    charges = await asyncio.gather(*(ledger.settle(held(g), 10, 20) for g in granted))
    assert sum(charges) == 990
    assert await ledger.budget_window(BKEY) == WindowUsage(990, 0)


async def test_concurrent_workload_never_overspends_budget_nor_window(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
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
    # durable as soon as the settles returned, without a close()
    assert ledgers.durable()["budgets"] == {("key1", BKEY.period): spent_by_key}
    assert ledgers.durable_window() == spent_by_key + spent_by_others


async def test_a_new_period_starts_from_zero(ledgers: Ledgers) -> None:
    ledger = ledgers.new()
    grant = await ledger.reserve("r1", KEY, 10_000, 100, 100, "key1", budget(100))
    await ledger.settle(held(grant), 100, 0)
    assert (await ledger.reserve("r2", KEY, 10_000, 1, 1, "key1", budget(100))).refused_by == "budget"
    following = BudgetKey("key1", "2026-11-26T00:00Z")
    fresh = await ledger.reserve("r3", KEY, 10_000, 100, 100, "key1", budget(100, following))
    assert (fresh.amount, fresh.remaining) == (100, 0)
    assert await ledger.budget_window(following) == WindowUsage(0, 100)
    assert await ledger.budget_window(BKEY) == WindowUsage(100, 0)
    # another key's budget in the same period is its own
    assert await ledger.budget_window(BudgetKey("key2", "2026-11-25T00:00Z")) == WindowUsage(0, 0)
