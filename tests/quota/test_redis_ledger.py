"""The shared ledger on a real Redis: what only it does, and exactness across processes.

The behaviours every ledger shares are in test_ledger_contract.py, run on this ledger too. Each
test has its own key prefix (cleaned up after it) and its own SQLite history (conftest.py); one test
runs the history on PostgreSQL (database `test`, a schema of its own) when a driver and the server are there.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DataError

from meshgate.config import normalize_database_url
from meshgate.quota.history import UsageHistory
from meshgate.quota.ledger import WindowKey, WindowUsage
from meshgate.quota.redis_ledger import RedisLedger
from meshgate.store.engine import migrate, sync_engine
from tests.conftest import require_services, unavailable
from tests.quota.conftest import BKEY, KEY, REDIS, budget, held, history, window_used, wipe

POSTGRES = normalize_database_url(
    os.environ.get("MESHGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
ROOT = Path(__file__).resolve().parents[2]

MakeLedger = Callable[..., RedisLedger]


async def kill(ledger: RedisLedger) -> None:
    """The process dies: no more renewals, progress flushes or history writes."""
    for task in ledger._tasks or []:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ledger._tasks = []  # close() has nothing left to stop


# ---------------------------------------------------------------- reservations and settlement


# ---------------------------------------------------------------- key budgets


async def test_a_settled_id_charges_nothing_in_another_process(make_redis: MakeLedger) -> None:
    first = make_redis()
    grant = await first.reserve("r1", KEY, 1000, 100, 100, "key1", budget(300))
    assert await first.settle(held(grant), 40, 60) == 100
    await first.reserve("r2", KEY, 1000, 150, 150, "key1", budget(300))  # in flight
    second = make_redis(snapshot_seconds=0)
    assert await second.budget_window(BKEY) == WindowUsage(100, 150)
    assert (await second.reserve("r3", KEY, 1000, 51, 51, "key1", budget(300))).refused_by == "budget"
    again = await second.reserve("r1", KEY, 1000, 50, 50, "key1", budget(300))  # a replayed settlement
    assert await second.settle(held(again), 40, 60) == 0
    assert await second.budget_window(BKEY) == WindowUsage(100, 150)
    assert await second.window(KEY) == WindowUsage(100, 150)


async def test_a_failing_history_is_retried_until_durable(make_redis: MakeLedger, db_url: str) -> None:
    ledger = make_redis()
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
    assert window_used(db_url) == 50 and history(db_url)["budgets"] == {("key1", BKEY.period): 50}
    assert await ledger.window(KEY) == WindowUsage(50, 0)


async def test_an_event_the_history_refuses_does_not_hold_back_the_others(
    make_redis: MakeLedger, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A value the database cannot store is refused however often it is sent: it must not stall the
    # charges queued behind it (every later settle would wait forever), nor be lost from Redis.
    ledger = make_redis()
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
    assert set(history(db_url)["events"]) == {"r0", "r2"}  # the refused one is left out of the history…
    assert await ledger.window(KEY) == WindowUsage(60, 0)  # …but still counted against the quota
    assert any(r.levelname == "ERROR" and "r1" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- several processes on one Redis


async def test_two_processes_under_fifty_way_concurrency_never_overspend(make_redis: MakeLedger, db_url: str) -> None:
    ledgers = [make_redis(snapshot_seconds=0), make_redis(snapshot_seconds=0)]
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
    assert window_used(db_url) == total and history(db_url)["budgets"] == {("key1", BKEY.period): spent_by_key}


async def test_settle_is_idempotent_across_processes(make_redis: MakeLedger, db_url: str) -> None:
    a, b = make_redis(snapshot_seconds=0), make_redis(snapshot_seconds=0)
    grants = [await a.reserve(f"r{i}", KEY, 100_000, 100, 100, "key1", budget(100_000)) for i in range(20)]
    # every request is settled by both processes at once (a retry that reached another replica)
    charges = await asyncio.gather(*(ledger.settle(held(g), 30, 40) for g in grants for ledger in (a, b)))
    assert sorted(charges) == [0] * 20 + [70] * 20
    assert await b.window(KEY) == WindowUsage(1400, 0)
    assert await a.budget_window(BKEY) == WindowUsage(1400, 0)
    assert window_used(db_url) == 1400 and len(history(db_url)["events"]) == 20


async def test_a_killed_process_holds_nothing_after_the_ttl_and_is_charged_its_progress(
    make_redis: MakeLedger, db_url: str
) -> None:
    dead = make_redis(reservation_ttl=1.0)
    grant = await dead.reserve("r1", KEY, 1000, 900, 900, "key1", budget(1000))
    dead.progress(held(grant), 30, 12)
    await asyncio.sleep(0.5)  # a tick wrote the progress to Redis
    await kill(dead)
    alive = make_redis(snapshot_seconds=0, adopt_after=0.2)
    assert (await alive.reserve("r2", KEY, 1000, 200, 200, None)).refused_by == "window"  # still held
    await asyncio.sleep(1.3)  # past the deadline (the last renewal was at most 1 s + a tick ago)
    # expired before this check: released, and charged what it had delivered
    assert (await alive.reserve("r3", KEY, 1000, 958, 958, None)).amount == 958
    assert await alive.budget_window(BKEY) == WindowUsage(42, 0)
    assert await alive.window(KEY) == WindowUsage(42, 958)
    deadline = time.monotonic() + 5
    while "r1" not in history(db_url)["events"]:  # the recovered charge reaches the history via the outbox
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert history(db_url)["events"]["r1"] == (42, "recovered")
    assert window_used(db_url) == 42 and history(db_url)["budgets"] == {("key1", BKEY.period): 42}


async def test_a_live_reservation_outlives_the_ttl(make_redis: MakeLedger) -> None:
    ledger = make_redis(reservation_ttl=1.0, snapshot_seconds=0)
    grant = await ledger.reserve("r1", KEY, 1000, 700, 700, None)
    for tokens in range(1, 11):  # a long stream, 3 s: three TTLs
        ledger.progress(held(grant), 10, tokens)
        await asyncio.sleep(0.3)
    assert await ledger.window(KEY) == WindowUsage(0, 700)
    assert await ledger.settle(held(grant), 10, 290) == 300
    assert await ledger.window(KEY) == WindowUsage(300, 0)


async def test_a_settle_after_its_reservation_expired_charges_the_real_usage(
    make_redis: MakeLedger, db_url: str
) -> None:
    # a process that hung for a whole TTL: its reservation was recovered at its progress, then it settles
    hung = make_redis(reservation_ttl=0.5, adopt_after=0.1)
    grant = await hung.reserve("r1", KEY, 1000, 500, 500, "key1", budget(1000))
    hung.progress(held(grant), 20, 10)
    await asyncio.sleep(0.3)
    tick = hung._tasks[0] if hung._tasks else None
    assert tick is not None
    tick.cancel()  # no renewals from here on
    await asyncio.sleep(0.7)
    other = make_redis(snapshot_seconds=0, adopt_after=0.1)
    assert await other.window(KEY) == WindowUsage(30, 0)  # swept: charged its progress
    assert await hung.settle(held(grant), 100, 80) == 180
    # Until the recovered entry is in the history too, Redis may count its 30 twice (never less than 180).
    assert (await other.window(KEY)).used in (180, 210)
    await asyncio.sleep(1.0)  # the recovered entry is adopted and written, in whatever order
    assert history(db_url)["events"]["r1"] == (180, "ok")
    assert window_used(db_url) == 180 and history(db_url)["budgets"] == {("key1", BKEY.period): 180}
    assert await other.window(KEY) == WindowUsage(180, 0)
    assert await other.budget_window(BKEY) == WindowUsage(180, 0)


async def test_a_charge_whose_writer_died_is_written_by_another_process(make_redis: MakeLedger, db_url: str) -> None:
    writer_dies = make_redis(settle_timeout=0.5)

    def down(events: Any) -> Any:
        raise OSError("database unreachable from this process")

    writer_dies._history.write = down  # type: ignore[method-assign]
    grant = await writer_dies.reserve("r1", KEY, 1000, 100, 100, None)
    assert await writer_dies.settle(held(grant), 60, 0) == 60  # counted in Redis; not durable yet
    await kill(writer_dies)
    assert "r1" not in history(db_url)["events"]
    adopter = make_redis(adopt_after=0.2, snapshot_seconds=0)
    await adopter.window(KEY)  # starts its tick
    deadline = time.monotonic() + 5
    while "r1" not in history(db_url)["events"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert history(db_url)["events"]["r1"] == (60, "ok") and window_used(db_url) == 60
    assert await adopter.window(KEY) == WindowUsage(60, 0)


async def test_snapshot_answers_the_headers_after_a_settle_without_a_round_trip(make_redis: MakeLedger) -> None:
    ledger = make_redis()
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


async def test_a_wiped_redis_is_rebuilt_from_the_history_exactly(
    make_redis: MakeLedger, prefix: str, db_url: str
) -> None:
    ledger = make_redis()
    for i in range(10):
        grant = await ledger.reserve(f"r{i}", KEY, 1000, 50, 50, "key1", budget(800))
        await ledger.settle(held(grant), 10, 20)
    await ledger.close()
    wipe(prefix)  # Redis restarted without persistence
    a, b = make_redis(snapshot_seconds=0), make_redis(snapshot_seconds=0)
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
    assert window_used(db_url) == 350 and history(db_url)["budgets"] == {("key1", BKEY.period): 350}


async def test_a_replayed_request_id_after_a_wipe_is_taken_back(
    make_redis: MakeLedger, prefix: str, db_url: str
) -> None:
    ledger = make_redis(snapshot_seconds=0)
    grant = await ledger.reserve("r1", KEY, 1000, 100, 100, "key1", budget(500))
    assert await ledger.settle(held(grant), 40, 60) == 100
    wipe(prefix)  # the settled marker is gone with the rest
    again = await ledger.reserve("r1", KEY, 1000, 100, 100, "key1", budget(500))
    assert await ledger.settle(held(again), 40, 60) == 0  # the history knew the request id
    assert await ledger.window(KEY) == WindowUsage(100, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(100, 0)
    assert window_used(db_url) == 100 and len(history(db_url)["events"]) == 1


async def test_today_is_preloaded_at_start(make_redis: MakeLedger, prefix: str, db_url: str) -> None:
    from meshgate.quota.ledger import utc_day

    today = WindowKey(3, "m", "api", utc_day())
    ledger = make_redis()
    await ledger.settle(held(await ledger.reserve("r1", today, 1000, 100, 100, None)), 70, 0)
    await ledger.close()
    wipe(prefix)
    fresh = make_redis()
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


async def test_three_os_processes_hammering_one_window(prefix: str, db_url: str, make_redis: MakeLedger) -> None:
    limit = 20_000
    start_at = str(time.time() + 3)
    workers = [_worker("hammer", REDIS, db_url, prefix, str(limit), "400", start_at) for _ in range(3)]
    outputs = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    total = sum(o["charged"] for o in outputs)
    assert all(o["granted"] > 0 for o in outputs)  # every process got some of the window
    assert total <= limit
    shared = WindowKey(7, "shared-model", "api", "2026-11-25")
    assert window_used(db_url, shared) == total == sum(t for t, _ in history(db_url)["events"].values())
    assert await make_redis(snapshot_seconds=0).window(shared) == WindowUsage(total, 0)


async def test_a_sigkilled_process_leaves_nothing_held_past_the_ttl(
    prefix: str, db_url: str, make_redis: MakeLedger
) -> None:
    worker = _worker("hang", REDIS, db_url, prefix, "1.0")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    shared = WindowKey(7, "shared-model", "api", "2026-11-25")
    survivor = make_redis(snapshot_seconds=0, adopt_after=0.2)
    assert await survivor.window(shared) == WindowUsage(0, 500)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    await asyncio.sleep(1.5)  # its last renewal was at most a TTL (1 s) before the kill
    assert await survivor.window(shared) == WindowUsage(60, 0)
    deadline = time.monotonic() + 5
    while "hung-request" not in history(db_url)["events"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert history(db_url)["events"]["hung-request"] == (60, "recovered") and window_used(db_url, shared) == 60


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


async def test_the_history_on_postgresql(make_redis: MakeLedger, prefix: str, postgres: str) -> None:
    ledgers = [make_redis(database=postgres, snapshot_seconds=0), make_redis(database=postgres, snapshot_seconds=0)]
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


async def test_the_gateway_shares_its_ledger_on_redis_when_configured(tmp_path: Path, db_url: str) -> None:
    from meshgate.config import load_settings
    from meshgate.quota.embedded import EmbeddedLedger
    from meshgate.server.state import Gateway

    shared = Gateway(load_settings(home=tmp_path, database_url=db_url, redis_url=REDIS, reservation_ttl=30.0), [])
    assert isinstance(shared.ledger, RedisLedger) and shared.ledger._ttl_ms == 30_000
    await shared.ledger.close()
    embedded = Gateway(load_settings(home=tmp_path, database_url=db_url, redis_url=None), [])
    assert isinstance(embedded.ledger, EmbeddedLedger)
    await embedded.ledger.close()
