"""Nothing is lost: a locked or failing database, a second ledger on one database, a crash mid-request."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshgate.quota import writer
from meshgate.quota.dblock import DatabaseInUse
from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Budget, BudgetKey, Reservation, WindowKey, WindowUsage
from meshgate.store.engine import migrate
from tests.quota.conftest import crash

MakeLedger = Callable[..., EmbeddedLedger]
KEY = WindowKey(1, "m", "api", "2026-11-25")
BKEY = BudgetKey("key1", "2026-11-25T00:00Z")
BUDGET = Budget(BKEY, 10_000, 1_700_000_000.0)


async def reserve(ledger: EmbeddedLedger, request_id: str, tokens: int, key: WindowKey = KEY) -> Reservation:
    grant = await ledger.reserve(request_id, key, 100_000, tokens, tokens, "key1", BUDGET)
    assert grant.reservation is not None
    return grant.reservation


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class LoopLag:
    """The longest the event loop was kept from running a 10 ms timer, while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - started - 0.01)

    def stop(self) -> float:
        self._task.cancel()
        return self.worst


# ------------------------------------------------------------------ 9: locked or failing database


async def test_a_locked_database_delays_settle_but_not_the_loop_and_loses_nothing(
    db: Path, ledger_on: MakeLedger
) -> None:
    ledger = ledger_on(db, busy_timeout_ms=200)  # short, so the writer's retries are exercised too
    warm = await reserve(ledger, "warm", 100)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    locker.execute("INSERT INTO quota_usage VALUES (9, 'x', 'api', '2026-11-25', 1)")  # uncommitted
    lag = LoopLag()
    settled = asyncio.create_task(ledger.settle(warm, 30, 20))
    started = time.monotonic()
    # the first use of a window reads the database: WAL readers pass a writer's lock
    cold_key = WindowKey(2, "m", "api", "2026-11-25")
    assert await asyncio.wait_for(ledger.window(cold_key), 0.5) == WindowUsage(0, 0)
    cold = await asyncio.wait_for(reserve(ledger, "cold", 40, cold_key), 0.5)
    cold_settled = asyncio.create_task(ledger.settle(cold, 10, 5))
    while time.monotonic() - started < 1.5:
        await asyncio.sleep(0.05)
        assert not settled.done() and not cold_settled.done()  # not durable yet: the answer waits
    # counted at once all the same: a reservation made meanwhile sees the charge
    assert await ledger.window(KEY) == WindowUsage(50, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(65, 0)
    locker.execute("ROLLBACK")
    assert await asyncio.wait_for(settled, 5) == 50
    assert await asyncio.wait_for(cold_settled, 5) == 15
    # a loop that waited on the lock would stall for >= 1.5 s; the margin is for a loaded CI machine
    assert lag.stop() < 0.3, f"the event loop stalled for {lag.worst:.3f} s"
    locker.close()
    assert rows(db, "SELECT request_id, total_tokens FROM usage_events ORDER BY request_id") == [
        ("cold", 15),
        ("warm", 50),
    ]
    assert rows(db, "SELECT account_id, used FROM quota_usage ORDER BY account_id") == [(1, 50), (2, 15)]
    assert rows(db, "SELECT used FROM key_budget_usage") == [(65,)]
    assert ledger._windows[KEY].pending == 0 and ledger._budgets[BKEY].pending == 0


async def test_a_failing_commit_is_retried_until_durable(
    db: Path, ledger_on: MakeLedger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = ledger_on(db)
    first = await reserve(ledger, "r1", 100)
    second = await reserve(ledger, "r2", 100)
    attempts: list[int] = []
    real_commit = writer.commit

    def flaky(conn: sqlite3.Connection, progress: Any, settlements: Any) -> list[bool]:
        attempts.append(len(settlements))
        if len(attempts) <= 3:
            raise sqlite3.OperationalError("disk I/O error")
        return real_commit(conn, progress, settlements)

    monkeypatch.setattr(writer, "commit", flaky)
    caplog.set_level(logging.WARNING, "meshgate.quota")
    one = asyncio.create_task(ledger.settle(first, 10, 20))
    await until(lambda: len(attempts) >= 1)
    two = asyncio.create_task(ledger.settle(second, 5, 5))  # arrives while the first is being retried
    assert await asyncio.wait_for(asyncio.gather(one, two), 10) == [30, 10]
    assert attempts[-1] == 2  # the retry took the later batch along: one commit for both
    assert await ledger.window(KEY) == WindowUsage(40, 0)
    assert await ledger.budget_window(BKEY) == WindowUsage(40, 0)
    assert rows(db, "SELECT SUM(total_tokens) FROM usage_events") == [(40,)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not commit" in m and "disk I/O error" in m for m in messages)
    assert any("succeed again" in m for m in messages)


async def test_an_idle_writer_lets_the_loop_commit_inline(
    db: Path, ledger_on: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_on(db)
    held = await reserve(ledger, "r1", 100)
    threads: list[int] = []
    real_commit = writer.commit

    def traced(conn: sqlite3.Connection, progress: Any, settlements: Any) -> list[bool]:
        threads.append(threading.get_ident())
        return real_commit(conn, progress, settlements)

    monkeypatch.setattr(writer, "commit", traced)
    assert await ledger.settle(held, 7, 3) == 10
    assert threads == [threading.get_ident()]  # committed on the event loop's thread: no crossing
    assert rows(db, "SELECT total_tokens FROM usage_events") == [(10,)]


async def test_a_busy_writer_keeps_the_order_of_progress_and_settlement(
    db: Path, ledger_on: MakeLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A progress row still queued in the thread must not land after its request's settlement,
    # or a restart would charge the request a second time (outcome "recovered").
    ledger = ledger_on(db, progress_interval=0.02)
    held = await reserve(ledger, "r1", 100)
    calls: list[tuple[int, int, int]] = []  # (thread, progress rows, settlements) per commit attempt
    real_commit = writer.commit
    failing = [True]

    def flaky(conn: sqlite3.Connection, progress: Any, settlements: Any) -> list[bool]:
        calls.append((threading.get_ident(), len(progress), len(settlements)))
        if progress and failing[0]:
            raise sqlite3.OperationalError("database is locked")
        return real_commit(conn, progress, settlements)

    monkeypatch.setattr(writer, "commit", flaky)
    ledger.progress(held, 10, 4)
    await until(lambda: any(p for (_, p, _) in calls))  # the progress row is in the thread, retrying
    settled = asyncio.create_task(ledger.settle(held, 10, 6))
    await asyncio.sleep(0.1)
    assert not settled.done()  # queued behind the progress row, not committed inline past it
    failing[0] = False
    assert await asyncio.wait_for(settled, 5) == 16
    loop_thread = threading.get_ident()
    assert all(thread != loop_thread for (thread, _, s) in calls if s)  # the settlement went to the thread
    assert rows(db, OPEN) == []
    assert rows(db, "SELECT total_tokens FROM usage_events") == [(16,)]


async def test_close_waits_until_everything_is_durable(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db, busy_timeout_ms=100)
    held = await reserve(ledger, "r1", 100)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    settled = asyncio.create_task(ledger.settle(held, 7, 8))
    await asyncio.sleep(0)
    closing = asyncio.create_task(ledger.close())
    await asyncio.sleep(0.5)
    assert not closing.done()
    locker.execute("ROLLBACK")
    locker.close()
    await asyncio.wait_for(closing, 10)
    assert await settled == 15
    assert rows(db, "SELECT total_tokens FROM usage_events") == [(15,)]


# ------------------------------------------------------------------ 10: one ledger per database


async def test_a_second_ledger_on_the_same_database_is_refused(db: Path, ledger_on: MakeLedger, tmp_path: Path) -> None:
    first = ledger_on(db)
    with pytest.raises(DatabaseInUse) as refused:
        ledger_on(db)
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and str(db) in message
    assert "one server per database" in message and "shared ledger" in message
    other = tmp_path / "other.db"
    migrate(f"sqlite:///{other}")
    ledger_on(other)  # another database has a lock of its own
    await first.close()  # closing lets go of it
    again = ledger_on(db)
    crash(again)  # and so does a killed process (the OS closes its descriptors)
    ledger_on(db)


# ------------------------------------------------------------------ 11: progress and crash recovery

OPEN = "SELECT request_id, prompt_tokens, completion_tokens FROM open_reservations ORDER BY request_id"


async def test_progress_is_flushed_while_it_changes_and_deleted_with_the_settlement(
    db: Path, ledger_on: MakeLedger
) -> None:
    ledger = ledger_on(db, progress_interval=0.05)
    held = await reserve(ledger, "r1", 100)
    ledger.progress(held, 10, 3)
    await until(lambda: rows(db, OPEN) == [("r1", 10, 3)])
    handed: list[int] = []
    real = ledger._writer.progress
    ledger._writer.progress = lambda batch: (handed.append(len(batch)), real(batch))  # type: ignore[method-assign]
    ledger.progress(held, 10, 9)
    await until(lambda: rows(db, OPEN) == [("r1", 10, 9)])
    await asyncio.sleep(0.2)  # several flushes with nothing new: no rows handed over again
    assert handed == [1]
    assert await ledger.settle(held, 10, 12) == 22
    assert rows(db, OPEN) == []  # gone in the transaction that recorded the usage event
    assert rows(db, "SELECT total_tokens, outcome FROM usage_events") == [(22, "ok")]
    ledger.progress(held, 10, 50)  # after the settlement: ignored
    await asyncio.sleep(0.15)
    assert rows(db, OPEN) == [] and ledger._progress_timer is None  # and no timer left running


async def test_a_crash_charges_the_last_durable_progress_once(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db, progress_interval=0.05)
    streaming = await reserve(ledger, "streaming", 500)
    other_day = await reserve(ledger, "yesterday", 100, WindowKey(1, "m", "api", "2026-11-24"))
    silent = await reserve(ledger, "silent", 300)  # never reported progress
    ledger.progress(streaming, 20, 57)
    ledger.progress(other_day, 4, 6)
    await until(lambda: len(rows(db, OPEN)) == 2)
    crash(ledger)

    reopened = ledger_on(db)
    assert await reopened.window(KEY) == WindowUsage(77, 0)  # the rest of the reservations released
    assert await reopened.window(WindowKey(1, "m", "api", "2026-11-24")) == WindowUsage(10, 0)
    assert await reopened.budget_window(BKEY) == WindowUsage(87, 0)
    assert sorted(rows(db, "SELECT request_id, prompt_tokens, completion_tokens, outcome FROM usage_events")) == [
        ("streaming", 20, 57, "recovered"),
        ("yesterday", 4, 6, "recovered"),
    ]
    assert rows(db, OPEN) == []
    # a replay of a recovered request charges nothing, and the next start-up recovers nothing
    again = await reopened.reserve("streaming", KEY, 100_000, 10, 10, "key1", BUDGET)
    assert again.reservation is not None and await reopened.settle(again.reservation, 5, 5) == 0
    assert silent.request_id not in {r for (r,) in rows(db, "SELECT request_id FROM usage_events")}
    await reopened.close()
    third = ledger_on(db)
    assert await third.window(KEY) == WindowUsage(77, 0)
    assert await third.budget_window(BKEY) == WindowUsage(87, 0)


async def test_recovery_is_idempotent_per_request_id(db: Path, ledger_on: MakeLedger) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO usage_events VALUES ('done', 1, 'key1', 'm', 'api', '2026-11-25', 1, 2, 3, 'ok', 0)")
        conn.execute("INSERT INTO quota_usage VALUES (1, 'm', 'api', '2026-11-25', 3)")
        for request_id, prompt, completion in (("done", 50, 50), ("zero", 0, 0), ("open", 8, 9)):
            conn.execute(
                "INSERT INTO open_reservations VALUES (?, 1, 'key1', 'm', 'api', '2026-11-25', NULL, NULL, ?, ?, 0)",
                (request_id, prompt, completion),
            )
    conn.close()
    ledger = ledger_on(db)
    assert await ledger.window(KEY) == WindowUsage(3 + 17, 0)  # "done" was settled: not charged again
    assert sorted(rows(db, "SELECT request_id, total_tokens, outcome FROM usage_events")) == [
        ("done", 3, "ok"),
        ("open", 17, "recovered"),
    ]
    assert rows(db, OPEN) == []
    assert await ledger.budget_window(BKEY) == WindowUsage(0, 0)  # no budget on these rows


async def test_a_failed_request_with_progress_leaves_nothing_to_recover(db: Path, ledger_on: MakeLedger) -> None:
    ledger = ledger_on(db, progress_interval=0.05)
    held = await reserve(ledger, "r1", 100)
    ledger.progress(held, 0, 0)
    await until(lambda: rows(db, OPEN) == [("r1", 0, 0)])
    assert await ledger.settle(held, 0, 0, "upstream_error") == 0  # charges nothing, but clears the row
    assert rows(db, OPEN) == [] and rows(db, "SELECT * FROM usage_events") == []
    crash(ledger)
    reopened = ledger_on(db)
    assert await reopened.window(KEY) == WindowUsage(0, 0)


def test_a_batch_with_a_replay_keeps_its_progress_rows_and_charges_only_the_new(db: Path) -> None:
    from meshgate.quota import durable

    conn = durable.connect(db, 1000)
    try:
        conn.execute("INSERT INTO usage_events VALUES ('old', 1, NULL, 'm', 'api', '2026-11-25', 1, 1, 2, 'ok', 0)")
        conn.execute(
            "INSERT INTO open_reservations VALUES ('new', 1, NULL, 'm', 'api', '2026-11-25', NULL, NULL, 1, 1, 0)"
        )

        def settlement(request_id: str, clears: bool) -> durable.Settlement:
            held = Reservation(request_id, KEY, 50, 1000, "key1", BUDGET)
            return durable.Settlement(request_id, durable.event_row(held, 5, 6, 11, "ok"), KEY, BKEY, 11, clears)

        streaming = durable.progress_row(Reservation("streaming", KEY, 50, 1000), 3, 4, 0.0)
        inserted = durable.commit(conn, [streaming], [settlement("old", False), settlement("new", True)])
        assert inserted == [False, True]  # the replay is found out one by one, after a rollback
        assert rows(db, OPEN) == [("streaming", 3, 4)]  # written again after that rollback; "new" cleared
        assert rows(db, "SELECT used FROM quota_usage") == [(11,)]
        assert rows(db, "SELECT used FROM key_budget_usage") == [(11,)]
    finally:
        conn.close()
