"""The embedded ledger: exact in one process, durable in SQLite.

Windows live in a dict touched only from the event loop thread, so check-and-reserve
is atomic without locks and costs about a microsecond. Each settlement is committed to
SQLite (WAL, synchronous=NORMAL: no fsync, but a `kill -9` of the gateway loses no
committed row) before the response that carries its usage leaves the gateway:
`settle` counts the usage in memory at once and returns only after the COMMIT. The
settlements of one event-loop tick share one transaction (group commit, run inline
from a `call_soon` callback): under load one COMMIT (~40 µs of syscalls) serves many
requests instead of one each. A reservation lives only in memory, so a crash simply releases it: on restart a
window's `used` is read back from what was settled.

Key budgets are windows of the same kind, keyed by (API key, period), next to the
account windows: `reserve` checks and reserves both with no `await` in between, and
a settlement's budget total is upserted in the same transaction as its usage event.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from meshgate.quota.ledger import Budget, BudgetKey, Grant, Reservation, WindowKey, WindowUsage

log = logging.getLogger("meshgate.quota")


@dataclass(slots=True)
class _Window:
    used: int
    reserved: int
    # Settlements counted in `used` but not committed yet: a window with some must stay in
    # memory, or reloading it from the database would forget them.
    pending: int = 0


@dataclass(slots=True)
class _Pending:
    """A settlement counted in memory, waiting for the tick's commit."""

    reservation: Reservation
    prompt_tokens: int
    completion_tokens: int
    charged: int
    outcome: str
    created_at: float
    window: _Window
    budget_window: _Window | None
    waiter: asyncio.Future[int]


_INSERT_EVENT = (
    "INSERT OR IGNORE INTO usage_events (request_id, account_id, api_key_id, model, bucket, day,"
    " prompt_tokens, completion_tokens, total_tokens, outcome, created_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_USAGE = (
    "INSERT INTO quota_usage (account_id, model, bucket, day, used) VALUES (?,?,?,?,?)"
    " ON CONFLICT (account_id, model, bucket, day) DO UPDATE SET used = used + excluded.used"
)
_UPSERT_BUDGET = (
    "INSERT INTO key_budget_usage (api_key_id, period, used) VALUES (?,?,?)"
    " ON CONFLICT (api_key_id, period) DO UPDATE SET used = used + excluded.used"
)


class EmbeddedLedger:
    def __init__(self, sqlite_path: Path) -> None:
        self._db = sqlite3.connect(sqlite_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # A checkpoint fsyncs the database file (hundreds of ms on some disks): never in a
        # commit on the event loop, but from a thread of its own (`_Checkpointer`).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(sqlite_path)
        self._windows: dict[WindowKey, _Window] = {}
        self._budgets: dict[BudgetKey, _Window] = {}
        self._budget_keys: dict[str, list[BudgetKey]] = {}  # API key id -> its budget windows in memory
        self._open: dict[str, Reservation] = {}
        self._pending: list[_Pending] = []
        self._flush_scheduled = False

    def _window_of(self, key: WindowKey) -> _Window:
        window = self._windows.get(key)
        if window is None:
            row = self._db.execute(
                "SELECT used FROM quota_usage WHERE account_id=? AND model=? AND bucket=? AND day=?",
                (key.account_id, key.model, key.bucket, key.day),
            ).fetchone()
            window = self._windows[key] = _Window(used=row[0] if row else 0, reserved=0)
            self._forget_old_days(key.day)
        return window

    def _forget_old_days(self, today: str) -> None:
        stale = [k for k, w in self._windows.items() if k.day < today and w.reserved == 0 and w.pending == 0]
        for k in stale:
            del self._windows[k]

    def _budget_of(self, key: BudgetKey) -> _Window:
        window = self._budgets.get(key)
        if window is None:
            row = self._db.execute(
                "SELECT used FROM key_budget_usage WHERE api_key_id=? AND period=?", (key.api_key_id, key.period)
            ).fetchone()
            window = self._budgets[key] = _Window(used=row[0] if row else 0, reserved=0)
            self._forget_other_periods(key)
        return window

    def _forget_other_periods(self, current: BudgetKey) -> None:
        """A key's new period began: drop its other periods' windows once idle (reloading one is exact)."""
        kept = [current]
        for other in self._budget_keys.get(current.api_key_id, ()):
            window = self._budgets[other]
            if window.reserved or window.pending:
                kept.append(other)
            else:
                del self._budgets[other]
        self._budget_keys[current.api_key_id] = kept

    async def reserve(
        self,
        request_id: str,
        key: WindowKey,
        limit: int,
        minimum: int,
        maximum: int,
        api_key_id: str | None,
        budget: Budget | None = None,
    ) -> Grant:
        # No `await` from here to the end: the checks and the reservations are one atomic step.
        window = self._window_of(key)
        free = limit - window.used - window.reserved
        refused_by = "window" if free < minimum or free <= 0 or request_id in self._open else None
        budget_window = None
        if budget is not None:
            budget_window = self._budget_of(budget.key)
            budget_free = budget.limit - budget_window.used - budget_window.reserved
            if refused_by is None and (budget_free < minimum or budget_free <= 0):
                refused_by = "budget"
            free = min(free, budget_free)
        if refused_by is not None:
            return Grant(0, limit, max(free, 0), None, refused_by)
        amount = min(maximum, free)
        window.reserved += amount
        if budget_window is not None:
            budget_window.reserved += amount
        reservation = Reservation(request_id, key, amount, limit, api_key_id, budget)
        self._open[request_id] = reservation
        return Grant(amount, limit, free - amount, reservation)

    async def settle(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, outcome: str = "ok"
    ) -> int:
        held = self._open.pop(reservation.request_id, None)
        if held is None:
            return 0  # already settled: settlement is idempotent per request id
        window = self._window_of(held.key)
        window.reserved -= held.amount
        budget_window = None
        if held.budget is not None:
            budget_window = self._budget_of(held.budget.key)
            budget_window.reserved -= held.amount
        # The whole usage, even above the reservation: the server decides what was really used.
        charged = max(prompt_tokens, 0) + max(completion_tokens, 0)
        if charged == 0 and outcome != "ok":
            return 0
        # Counted at once, so a reservation made before the commit already sees it (never overspends).
        window.used += charged
        window.pending += 1
        if budget_window is not None:
            budget_window.used += charged
            budget_window.pending += 1
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._pending.append(
            _Pending(
                held, prompt_tokens, completion_tokens, charged, outcome, time.time(), window, budget_window, waiter
            )
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await waiter  # resolved only after COMMIT: the caller may then report the usage

    def _flush(self) -> None:
        """Commit every settlement made during this event-loop tick in one transaction (group commit)."""
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            inserted = self._commit(batch)
        except BaseException as exc:
            for item in batch:
                _uncount(item, item.charged)
                if not item.waiter.done():
                    item.waiter.set_exception(exc)
            return
        for item, ok in zip(batch, inserted, strict=True):
            # not ok: the request id was already in the history (settled by an earlier process)
            charged = item.charged if ok else 0
            _uncount(item, item.charged - charged)
            if not item.waiter.done():
                item.waiter.set_result(charged)

    def _commit(self, batch: list[_Pending]) -> list[bool]:
        db = self._db
        rows = [
            (
                item.reservation.request_id,
                item.reservation.key.account_id,
                item.reservation.api_key_id,
                item.reservation.key.model,
                item.reservation.key.bucket,
                item.reservation.key.day,
                item.prompt_tokens,
                item.completion_tokens,
                item.charged,
                item.outcome,
                item.created_at,
            )
            for item in batch
        ]
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.executemany(_INSERT_EVENT, rows)
            if cursor.rowcount == len(rows):
                inserted = [True] * len(rows)
            else:  # some ids were already there: find out which, one by one
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                inserted = [db.execute(_INSERT_EVENT, row).rowcount == 1 for row in rows]
            totals: dict[WindowKey, int] = {}
            budgets: dict[BudgetKey, int] = {}
            for item, ok in zip(batch, inserted, strict=True):
                if ok:
                    key = item.reservation.key
                    totals[key] = totals.get(key, 0) + item.charged
                    budget = item.reservation.budget
                    if budget is not None:
                        budgets[budget.key] = budgets.get(budget.key, 0) + item.charged
            if totals:
                db.executemany(
                    _UPSERT_USAGE, [(k.account_id, k.model, k.bucket, k.day, used) for k, used in totals.items()]
                )
            if budgets:
                db.executemany(_UPSERT_BUDGET, [(k.api_key_id, k.period, used) for k, used in budgets.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return inserted

    async def window(self, key: WindowKey) -> WindowUsage:
        window = self._window_of(key)
        return WindowUsage(window.used, window.reserved)

    async def budget_window(self, key: BudgetKey) -> WindowUsage:
        window = self._budget_of(key)
        return WindowUsage(window.used, window.reserved)

    async def close(self) -> None:
        if self._pending:
            self._flush()
        self._checkpointer.stop()
        self._db.close()


def _uncount(item: _Pending, tokens: int) -> None:
    """The settlement's commit is over: it is no longer pending; `tokens` of it were not charged after all."""
    item.window.used -= tokens
    item.window.pending -= 1
    if item.budget_window is not None:
        item.budget_window.used -= tokens
        item.budget_window.pending -= 1


class _Checkpointer:
    """Copies the WAL into the database file every second, off the event loop.

    PASSIVE checkpoints never wait for (or block) the ledger's commits; they keep the WAL
    from growing without bound now that commits do not checkpoint themselves.
    """

    def __init__(self, sqlite_path: Path, interval: float = 1.0) -> None:
        self._path = sqlite_path
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshgate-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        try:
            while not self._stopped.wait(self._interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed; retrying in %.0f s", self._interval, exc_info=True)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
