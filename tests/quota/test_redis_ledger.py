"""The shared ledger on a real Redis: the embedded ledger's behaviours, and exactness across processes.

Each test has its own key prefix (cleaned up after it) and its own SQLite history; one test runs the
history on PostgreSQL (database `test`, a schema of its own) when a driver and the server are there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DataError

from meshgate.config import normalize_database_url
from meshgate.quota.history import UsageHistory
from meshgate.quota.ledger import Budget, BudgetKey, Grant, Reservation, WindowKey, WindowUsage
from meshgate.quota.redis_ledger import RedisLedger
from meshgate.store.engine import migrate, sync_engine
from tests.conftest import require_services, unavailable

REDIS = os.environ.get("MESHGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES = normalize_database_url(
    os.environ.get("MESHGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
ROOT = Path(__file__).resolve().parents[2]
KEY = WindowKey(1, "m", "api", "2026-11-25")
BKEY = BudgetKey("key1", "2026-11-25T00:00Z")

MakeLedger = Callable[..., RedisLedger]


def budget(limit: int, key: BudgetKey = BKEY) -> Budget:
    return Budget(key, limit, 1_700_000_000.0)


@pytest.fixture
def prefix() -> Iterator[str]:
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
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    migrate(url)
    return url


@pytest.fixture
async def make(prefix: str, db: str) -> AsyncIterator[MakeLedger]:
    """New ledgers (gateway processes) on this test's Redis prefix and history; closed at the end."""
    made: list[RedisLedger] = []

    def factory(**options: Any) -> RedisLedger:
        options.setdefault("database", db)
        ledger = RedisLedger(REDIS, prefix=prefix, **options)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        await ledger.close()


async def kill(ledger: RedisLedger) -> None:
    """The process dies: no more renewals, progress flushes or history writes."""
    for task in ledger._tasks or []:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ledger._tasks = []  # close() has nothing left to stop


def history(url: str) -> dict[str, Any]:
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


def held(grant: Grant) -> Reservation:
    assert grant.reservation is not None
    return grant.reservation


# ---------------------------------------------------------------- the embedded ledger's behaviours


async def test_reserve_is_all_or_nothing_within_the_limit(make: MakeLedger) -> None:
    ledger = make()
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


async def test_a_request_id_holding_a_reservation_is_refused(make: MakeLedger) -> None:
    ledger = make()
    assert (await ledger.reserve("r1", KEY, 100, 10, 10, None)).amount == 10
    again = await ledger.reserve("r1", KEY, 100, 10, 10, None)
    assert (again.amount, again.refused_by, again.remaining) == (0, "window", 90)
    assert await ledger.window(KEY) == WindowUsage(0, 10)


async def test_settle_charges_usage_releases_the_rest_once(make: MakeLedger, db: str) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 100, 80, 80, "key1")
    assert await ledger.settle(held(grant), 10, 15) == 25
    assert await ledger.settle(held(grant), 10, 15) == 0  # idempotent per request id
    assert await ledger.window(KEY) == WindowUsage(25, 0)
    assert history(db)["events"] == {"r1": (25, "ok")} and window_used(db) == 25


async def test_settle_charges_the_whole_usage_even_above_the_reservation(make: MakeLedger) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert await ledger.settle(held(grant), 20, 100) == 120
    assert await ledger.window(KEY) == WindowUsage(120, 0)
    assert (await ledger.reserve("r2", KEY, 100, 1, 1, None)).reservation is None


async def test_failed_request_holds_and_charges_nothing(make: MakeLedger, db: str) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 100, 30, 30, None)
    assert await ledger.settle(held(grant), 0, 0, "upstream_error") == 0
    assert await ledger.window(KEY) == WindowUsage(0, 0)
    assert history(db)["events"] == {}
    zero = await ledger.reserve("r2", KEY, 100, 30, 30, None)
    assert await ledger.settle(held(zero), -5, 0) == 0  # "ok" with nothing used is recorded, as 0
    assert history(db)["events"] == {"r2": (0, "ok")}


async def test_concurrent_random_workload_never_overspends(make: MakeLedger, db: str) -> None:
    ledger = make()
    limit = 5_000
    charged: list[int] = []

    async def request(i: int) -> None:
        want = random.randint(10, 400)
        grant = await ledger.reserve(f"r{i}", KEY, limit, want, want, None)
        if grant.reservation is None:
            return
        await asyncio.sleep(random.random() / 100)
        charged.append(
            await ledger.settle(grant.reservation, random.randint(0, want // 2), random.randint(0, want // 2))
        )

    await asyncio.gather(*(request(i) for i in range(1000)))
    window = await ledger.window(KEY)
    assert window.reserved == 0 and window.used == sum(charged) <= limit
    await ledger.close()
    assert window_used(db) == sum(charged)  # the history agrees
    # another gateway process reads the same window
    assert (await make().window(KEY)).used == sum(charged)


async def test_windows_are_separate_per_day_bucket_model_account(make: MakeLedger) -> None:
    ledger = make()
    for key in (
        KEY,
        WindowKey(1, "m", "api", "2026-11-26"),
        WindowKey(1, "m", "chat", "2026-11-25"),
        WindowKey(1, "other", "api", "2026-11-25"),
        WindowKey(2, "m", "api", "2026-11-25"),
        WindowKey(1, "m:api", "api", "2026-11-25"),  # a colon in a model name makes no other window's key
    ):
        assert (await ledger.reserve(f"r-{key}", key, 100, 100, 100, None)).amount == 100


async def test_settle_returns_once_the_charge_is_in_the_history(make: MakeLedger, db: str) -> None:
    ledger = make()
    for i in range(50):
        grant = await ledger.reserve(f"r{i}", KEY, 10_000, 10, 10, None)
        assert await ledger.settle(held(grant), 4, 6) == 10
        assert len(history(db)["events"]) == i + 1
    assert window_used(db) == 500


# ---------------------------------------------------------------- key budgets


async def test_budget_refusal_leaves_the_window_untouched(make: MakeLedger) -> None:
    ledger = make()
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


async def test_window_refusal_leaves_the_budget_untouched(make: MakeLedger) -> None:
    ledger = make()
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


async def test_settlement_charges_window_and_budget_once(make: MakeLedger, db: str) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 1000, 80, 80, "key1", budget(500))
    assert await ledger.settle(held(grant), 10, 15) == 25
    assert await ledger.settle(held(grant), 10, 15) == 0  # idempotent: charges neither again
    assert await ledger.window(KEY) == WindowUsage(25, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(25, 0)
    failed = await ledger.reserve("r2", KEY, 1000, 80, 80, "key1", budget(500))
    assert await ledger.settle(held(failed), 0, 0, "upstream_error") == 0
    assert await ledger.budget_window(BKEY) == WindowUsage(25, 0)
    assert history(db)["budgets"] == {("key1", "2026-11-25T00:00Z"): 25}


async def test_settle_above_the_reservation_charges_the_budget_the_whole_amount(make: MakeLedger) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 1000, 50, 50, "key1", budget(100))
    assert await ledger.settle(held(grant), 30, 90) == 120
    assert await ledger.window(KEY) == WindowUsage(120, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(120, 0)  # over its limit by this one request
    refused = await ledger.reserve("r2", KEY, 1000, 1, 1, "key1", budget(100))
    assert (refused.remaining, refused.refused_by) == (0, "budget")


async def test_one_budget_spans_the_windows_of_every_model(make: MakeLedger) -> None:
    ledger = make()
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


async def test_fifty_concurrent_reserves_take_exactly_the_budget(make: MakeLedger) -> None:
    ledger = make()
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


async def test_concurrent_workload_never_overspends_budget_nor_window(make: MakeLedger, db: str) -> None:
    ledger = make()
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
    assert history(db)["budgets"] == {("key1", BKEY.period): spent_by_key}
    assert window_used(db) == spent_by_key + spent_by_others


async def test_a_settled_id_charges_nothing_in_another_process(make: MakeLedger) -> None:
    first = make()
    grant = await first.reserve("r1", KEY, 1000, 100, 100, "key1", budget(300))
    assert await first.settle(held(grant), 40, 60) == 100
    await first.reserve("r2", KEY, 1000, 150, 150, "key1", budget(300))  # in flight
    second = make(snapshot_seconds=0)
    assert await second.budget_window(BKEY) == WindowUsage(100, 150)
    assert (await second.reserve("r3", KEY, 1000, 51, 51, "key1", budget(300))).refused_by == "budget"
    again = await second.reserve("r1", KEY, 1000, 50, 50, "key1", budget(300))  # a replayed settlement
    assert await second.settle(held(again), 40, 60) == 0
    assert await second.budget_window(BKEY) == WindowUsage(100, 150)
    assert await second.window(KEY) == WindowUsage(100, 150)


async def test_a_new_period_starts_from_zero(make: MakeLedger) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 10_000, 100, 100, "key1", budget(100))
    await ledger.settle(held(grant), 100, 0)
    assert (await ledger.reserve("r2", KEY, 10_000, 1, 1, "key1", budget(100))).refused_by == "budget"
    following = BudgetKey("key1", "2026-11-26T00:00Z")
    fresh = await ledger.reserve("r3", KEY, 10_000, 100, 100, "key1", budget(100, following))
    assert (fresh.amount, fresh.remaining) == (100, 0)
    assert await ledger.budget_window(following) == WindowUsage(0, 100)
    assert await ledger.budget_window(BKEY) == WindowUsage(100, 0)
    assert await ledger.budget_window(BudgetKey("key2", "2026-11-25T00:00Z")) == WindowUsage(0, 0)


async def test_a_failing_history_is_retried_until_durable(make: MakeLedger, db: str) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 1000, 100, 100, "key1", budget(300))
    real, failures = ledger._history.write, [2]

    def flaky(events: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise OSError("database is down")
        return real(events)

    ledger._history.write = flaky  # type: ignore[method-assign]
    assert await ledger.settle(held(grant), 50, 0) == 50  # returned only once written, after two retries
    assert failures == [0]
    assert window_used(db) == 50 and history(db)["budgets"] == {("key1", BKEY.period): 50}
    assert await ledger.window(KEY) == WindowUsage(50, 0)


async def test_an_event_the_history_refuses_does_not_hold_back_the_others(
    make: MakeLedger, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A value the database cannot store is refused however often it is sent: it must not stall the
    # charges queued behind it (every later settle would wait forever), nor be lost from Redis.
    ledger = make()
    grants = [await ledger.reserve(f"r{i}", KEY, 1000, 100, 100, "key1", budget(1000)) for i in range(3)]
    real = ledger._history.write

    def refusing(events: Any) -> Any:
        if any(e.request_id == "r1" for e in events):
            raise DataError("INSERT …", {}, ValueError("value too long for type character varying(16)"))
        return real(events)

    ledger._history.write = refusing  # type: ignore[method-assign]
    charged = await asyncio.wait_for(
        asyncio.gather(*(ledger.settle(held(g), 10 * (i + 1), 0) for i, g in enumerate(grants))), 10
    )
    assert charged == [10, 20, 30]
    assert set(history(db)["events"]) == {"r0", "r2"}  # the refused one is left out of the history…
    assert await ledger.window(KEY) == WindowUsage(60, 0)  # …but still counted against the quota
    assert any(r.levelname == "ERROR" and "r1" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- several processes on one Redis


async def test_two_processes_under_fifty_way_concurrency_never_overspend(make: MakeLedger, db: str) -> None:
    ledgers = [make(snapshot_seconds=0), make(snapshot_seconds=0)]
    # in flight: ~50 x 155 unbudgeted tokens (room left in the window), as many budgeted (over the budget)
    window_limit, budget_limit = 12_000, 2_500
    charged: dict[str | None, list[int]] = {"key1": [], None: []}
    refusals = {"window": 0, "budget": 0}

    async def client(ledger: RedisLedger, name: str, i: int) -> None:
        api_key = "key1" if i % 2 else None
        for round_ in range(15):
            want = random.randint(10, 300)
            limits = budget(budget_limit) if api_key else None
            grant = await ledger.reserve(f"{name}-{i}-{round_}", KEY, window_limit, want, want, api_key, limits)
            if grant.reservation is None:
                assert grant.refused_by is not None
                refusals[grant.refused_by] += 1
                continue
            await asyncio.sleep(random.random() / 200)
            used = await ledger.settle(grant.reservation, random.randint(0, want // 2), random.randint(0, want // 2))
            charged[api_key].append(used)

    await asyncio.gather(*(client(ledger, f"p{n}", i) for n, ledger in enumerate(ledgers) for i in range(50)))
    spent_by_key, total = sum(charged["key1"]), sum(charged["key1"]) + sum(charged[None])
    assert spent_by_key <= budget_limit and total <= window_limit
    assert refusals["window"] > 0 and refusals["budget"] > 0
    for ledger in ledgers:
        assert await ledger.window(KEY) == WindowUsage(total, 0)
        assert await ledger.budget_window(BKEY) == WindowUsage(spent_by_key, 0)
    assert window_used(db) == total and history(db)["budgets"] == {("key1", BKEY.period): spent_by_key}


async def test_settle_is_idempotent_across_processes(make: MakeLedger, db: str) -> None:
    a, b = make(snapshot_seconds=0), make(snapshot_seconds=0)
    grants = [await a.reserve(f"r{i}", KEY, 100_000, 100, 100, "key1", budget(100_000)) for i in range(20)]
    # every request is settled by both processes at once (a retry that reached another replica)
    charges = await asyncio.gather(*(ledger.settle(held(g), 30, 40) for g in grants for ledger in (a, b)))
    assert sorted(charges) == [0] * 20 + [70] * 20
    assert await b.window(KEY) == WindowUsage(1400, 0)
    assert await a.budget_window(BKEY) == WindowUsage(1400, 0)
    assert window_used(db) == 1400 and len(history(db)["events"]) == 20


async def test_a_killed_process_holds_nothing_after_the_ttl_and_is_charged_its_progress(
    make: MakeLedger, db: str
) -> None:
    dead = make(reservation_ttl=1.0)
    grant = await dead.reserve("r1", KEY, 1000, 900, 900, "key1", budget(1000))
    dead.progress(held(grant), 30, 12)
    await asyncio.sleep(0.5)  # a tick wrote the progress to Redis
    await kill(dead)
    alive = make(snapshot_seconds=0, adopt_after=0.2)
    assert (await alive.reserve("r2", KEY, 1000, 200, 200, None)).refused_by == "window"  # still held
    await asyncio.sleep(1.3)  # past the deadline (the last renewal was at most 1 s + a tick ago)
    # expired before this check: released, and charged what it had delivered
    assert (await alive.reserve("r3", KEY, 1000, 958, 958, None)).amount == 958
    assert await alive.budget_window(BKEY) == WindowUsage(42, 0)
    assert await alive.window(KEY) == WindowUsage(42, 958)
    deadline = time.monotonic() + 5
    while "r1" not in history(db)["events"]:  # the recovered charge reaches the history via the outbox
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert history(db)["events"]["r1"] == (42, "recovered")
    assert window_used(db) == 42 and history(db)["budgets"] == {("key1", BKEY.period): 42}


async def test_a_live_reservation_outlives_the_ttl(make: MakeLedger) -> None:
    ledger = make(reservation_ttl=1.0, snapshot_seconds=0)
    grant = await ledger.reserve("r1", KEY, 1000, 700, 700, None)
    for tokens in range(1, 11):  # a long stream, 3 s: three TTLs
        ledger.progress(held(grant), 10, tokens)
        await asyncio.sleep(0.3)
    assert await ledger.window(KEY) == WindowUsage(0, 700)
    assert await ledger.settle(held(grant), 10, 290) == 300
    assert await ledger.window(KEY) == WindowUsage(300, 0)


async def test_a_settle_after_its_reservation_expired_charges_the_real_usage(make: MakeLedger, db: str) -> None:
    # a process that hung for a whole TTL: its reservation was recovered at its progress, then it settles
    hung = make(reservation_ttl=0.5, adopt_after=0.1)
    grant = await hung.reserve("r1", KEY, 1000, 500, 500, "key1", budget(1000))
    hung.progress(held(grant), 20, 10)
    await asyncio.sleep(0.3)
    tick = hung._tasks[0] if hung._tasks else None
    assert tick is not None
    tick.cancel()  # no renewals from here on
    await asyncio.sleep(0.7)
    other = make(snapshot_seconds=0, adopt_after=0.1)
    assert await other.window(KEY) == WindowUsage(30, 0)  # swept: charged its progress
    assert await hung.settle(held(grant), 100, 80) == 180
    # Until the recovered entry is in the history too, Redis may count its 30 twice (never less than 180).
    assert (await other.window(KEY)).used in (180, 210)
    await asyncio.sleep(1.0)  # the recovered entry is adopted and written, in whatever order
    assert history(db)["events"]["r1"] == (180, "ok")
    assert window_used(db) == 180 and history(db)["budgets"] == {("key1", BKEY.period): 180}
    assert await other.window(KEY) == WindowUsage(180, 0)
    assert await other.budget_window(BKEY) == WindowUsage(180, 0)


async def test_a_charge_whose_writer_died_is_written_by_another_process(make: MakeLedger, db: str) -> None:
    writer_dies = make(settle_timeout=0.5)

    def down(events: Any) -> Any:
        raise OSError("database unreachable from this process")

    writer_dies._history.write = down  # type: ignore[method-assign]
    grant = await writer_dies.reserve("r1", KEY, 1000, 100, 100, None)
    assert await writer_dies.settle(held(grant), 60, 0) == 60  # counted in Redis; not durable yet
    await kill(writer_dies)
    assert "r1" not in history(db)["events"]
    adopter = make(adopt_after=0.2, snapshot_seconds=0)
    await adopter.window(KEY)  # starts its tick
    deadline = time.monotonic() + 5
    while "r1" not in history(db)["events"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert history(db)["events"]["r1"] == (60, "ok") and window_used(db) == 60
    assert await adopter.window(KEY) == WindowUsage(60, 0)


async def test_snapshot_answers_the_headers_after_a_settle_without_a_round_trip(make: MakeLedger) -> None:
    ledger = make()
    grant = await ledger.reserve("r1", KEY, 1000, 100, 100, None)
    await ledger.settle(held(grant), 10, 20)

    calls = ledger._calls.call

    async def no_read(script: Any, keys: list[str], args: list[Any]) -> Any:
        assert script is not ledger._read, "window() went to Redis"
        return await calls(script, keys, args)

    ledger._calls.call = no_read  # type: ignore[method-assign]
    assert await ledger.window(KEY) == WindowUsage(30, 0)
    ledger._calls.call = calls  # type: ignore[method-assign]


# ---------------------------------------------------------------- Redis loses everything


async def test_a_wiped_redis_is_rebuilt_from_the_history_exactly(make: MakeLedger, prefix: str, db: str) -> None:
    ledger = make()
    for i in range(10):
        grant = await ledger.reserve(f"r{i}", KEY, 1000, 50, 50, "key1", budget(800))
        await ledger.settle(held(grant), 10, 20)
    await ledger.close()
    wipe(prefix)  # Redis restarted without persistence
    a, b = make(snapshot_seconds=0), make(snapshot_seconds=0)
    # two processes touch the lost window at once: both rebuild it, neither doubles it
    grants = await asyncio.gather(
        *(
            ledger.reserve(f"n{n}-{i}", KEY, 1000, 100, 100, "key1", budget(800))
            for n, ledger in enumerate((a, b))
            for i in range(5)
        )
    )
    assert sum(g.amount for g in grants) == 500  # the budget has 800 - 300 free
    assert await a.window(KEY) == WindowUsage(300, 500) and await b.budget_window(BKEY) == WindowUsage(300, 500)
    assert (await a.reserve("x", KEY, 1000, 1, 1, "key1", budget(800))).refused_by == "budget"
    wipe(prefix)  # again, with reservations in flight: they vanish with Redis; their settlements still count
    owners = [a] * 5 + [b] * 5
    charges = await asyncio.gather(
        *(o.settle(g.reservation, 5, 5) for g, o in zip(grants, owners, strict=True) if g.reservation)
    )
    assert charges == [10] * 5
    assert await a.window(KEY) == WindowUsage(350, 0) and await b.budget_window(BKEY) == WindowUsage(350, 0)
    assert window_used(db) == 350 and history(db)["budgets"] == {("key1", BKEY.period): 350}


async def test_a_replayed_request_id_after_a_wipe_is_taken_back(make: MakeLedger, prefix: str, db: str) -> None:
    ledger = make(snapshot_seconds=0)
    grant = await ledger.reserve("r1", KEY, 1000, 100, 100, "key1", budget(500))
    assert await ledger.settle(held(grant), 40, 60) == 100
    wipe(prefix)  # the settled marker is gone with the rest
    again = await ledger.reserve("r1", KEY, 1000, 100, 100, "key1", budget(500))
    assert await ledger.settle(held(again), 40, 60) == 0  # the history knew the request id
    assert await ledger.window(KEY) == WindowUsage(100, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(100, 0)
    assert window_used(db) == 100 and len(history(db)["events"]) == 1


async def test_today_is_preloaded_at_start(make: MakeLedger, prefix: str, db: str) -> None:
    from meshgate.quota.ledger import utc_day

    today = WindowKey(3, "m", "api", utc_day())
    ledger = make()
    await ledger.settle(held(await ledger.reserve("r1", today, 1000, 100, 100, None)), 70, 0)
    await ledger.close()
    wipe(prefix)
    fresh = make()
    fresh._start()
    client = redis.Redis.from_url(REDIS, decode_responses=True)
    deadline = time.monotonic() + 5
    while client.hget(f"{prefix}w:{today.day}:3:api:m", "used") != "70":  # before anyone touched it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    client.close()


# ---------------------------------------------------------------- real OS processes


def _worker(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.quota.ledger_worker", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


async def test_three_os_processes_hammering_one_window(prefix: str, db: str, make: MakeLedger) -> None:
    limit = 20_000
    start_at = str(time.time() + 3)
    workers = [_worker("hammer", REDIS, db, prefix, str(limit), "400", start_at) for _ in range(3)]
    outputs = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    total = sum(o["charged"] for o in outputs)
    assert all(o["granted"] > 0 for o in outputs)  # every process got some of the window
    assert total <= limit
    shared = WindowKey(7, "shared-model", "api", "2026-11-25")
    assert window_used(db, shared) == total == sum(t for t, _ in history(db)["events"].values())
    assert await make(snapshot_seconds=0).window(shared) == WindowUsage(total, 0)


async def test_a_sigkilled_process_leaves_nothing_held_past_the_ttl(prefix: str, db: str, make: MakeLedger) -> None:
    worker = _worker("hang", REDIS, db, prefix, "1.0")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    shared = WindowKey(7, "shared-model", "api", "2026-11-25")
    survivor = make(snapshot_seconds=0, adopt_after=0.2)
    assert await survivor.window(shared) == WindowUsage(0, 500)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    await asyncio.sleep(1.5)  # its last renewal was at most a TTL (1 s) before the kill
    assert await survivor.window(shared) == WindowUsage(60, 0)
    deadline = time.monotonic() + 5
    while "hung-request" not in history(db)["events"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert history(db)["events"]["hung-request"] == (60, "recovered") and window_used(db, shared) == 60


# ---------------------------------------------------------------- PostgreSQL history


@pytest.fixture
def postgres() -> Iterator[str]:
    require_services()  # skipped without PostgreSQL and Redis; a failure under CI=true
    schema = f"mgtest_{os.urandom(4).hex()}"
    admin = create_engine(POSTGRES)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        unavailable(f"no PostgreSQL at {POSTGRES}: {exc}")
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    migrate(url)
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


async def test_the_history_on_postgresql(make: MakeLedger, prefix: str, postgres: str) -> None:
    ledgers = [make(database=postgres, snapshot_seconds=0), make(database=postgres, snapshot_seconds=0)]
    charged: list[int] = []
    settled: list[str] = []

    async def client(ledger: RedisLedger, name: str) -> None:
        for round_ in range(10):
            want = random.randint(10, 300)
            grant = await ledger.reserve(f"{name}-{round_}", KEY, 6_000, want, want, "key1", budget(4_000))
            if grant.reservation is not None:
                charged.append(await ledger.settle(grant.reservation, want // 3, want // 3))
                settled.append(grant.reservation.request_id)

    await asyncio.gather(*(client(ledger, f"p{n}-{i}") for n, ledger in enumerate(ledgers) for i in range(25)))
    assert sum(charged) <= 4_000
    assert window_used(postgres) == sum(charged) and history(postgres)["budgets"] == {
        ("key1", BKEY.period): sum(charged)
    }
    grant = await ledgers[0].reserve(settled[0], KEY, 100_000, 1, 1, "key1", budget(100_000))  # a replay
    wipe(prefix)
    assert await ledgers[1].settle(held(grant), 5, 5) == 0
    assert await ledgers[1].window(KEY) == WindowUsage(sum(charged), 0)  # rebuilt from PostgreSQL
    engine = sync_engine(postgres)
    assert UsageHistory(engine).budget_used(BKEY) == sum(charged)
    engine.dispose()


# ---------------------------------------------------------------- wiring


async def test_the_gateway_shares_its_ledger_on_redis_when_configured(tmp_path: Path, db: str) -> None:
    from meshgate.config import load_settings
    from meshgate.quota.embedded import EmbeddedLedger
    from meshgate.server.state import Gateway

    shared = Gateway(load_settings(home=tmp_path, database_url=db, redis_url=REDIS, reservation_ttl=30.0), [])
    assert isinstance(shared.ledger, RedisLedger) and shared.ledger._ttl_ms == 30_000
    await shared.ledger.close()
    embedded = Gateway(load_settings(home=tmp_path, database_url=db, redis_url=None), [])
    assert isinstance(embedded.ledger, EmbeddedLedger)
    await embedded.ledger.close()
