"""The embedded ledger's durable side: what one transaction writes to SQLite, and start-up recovery.

Plain functions over a `sqlite3.Connection`, so the writer thread (`writer.py`) and the start-up
recovery share them. A settlement inserts its usage event (the request id is the primary key:
`INSERT OR IGNORE` makes a replay charge nothing), adds its charge to the window total and the key
budget total, and deletes the request's progress row (`open_reservations`) in the same
transaction, so a request is always either open (charged its progress by a restart) or settled,
never both.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meshgate.quota.ledger import BudgetKey, Reservation, WindowKey

# (request_id, account_id, api_key_id, model, bucket, day, prompt, completion, total, outcome, created_at)
EventRow = tuple[str, int, str | None, str, str, str, int, int, int, str, float]
# (request_id, account_id, api_key_id, model, bucket, day, budget_key_id, budget_period, prompt, completion, at)
ProgressRow = tuple[str, int, str | None, str, str, str, str | None, str | None, int, int, float]

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
_UPSERT_PROGRESS = (
    "INSERT INTO open_reservations (request_id, account_id, api_key_id, model, bucket, day, budget_key_id,"
    " budget_period, prompt_tokens, completion_tokens, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (request_id) DO UPDATE SET prompt_tokens = excluded.prompt_tokens,"
    " completion_tokens = excluded.completion_tokens, updated_at = excluded.updated_at"
)
_DELETE_PROGRESS = "DELETE FROM open_reservations WHERE request_id=?"
SELECT_WINDOW = "SELECT used FROM quota_usage WHERE account_id=? AND model=? AND bucket=? AND day=?"
SELECT_BUDGET = "SELECT used FROM key_budget_usage WHERE api_key_id=? AND period=?"


@dataclass(slots=True)
class Settlement:
    """One settle's durable record, built on the event loop and written by the writer thread."""

    request_id: str
    event: EventRow | None  # None: nothing to record, only the progress row to delete
    window: WindowKey
    budget: BudgetKey | None
    charged: int
    clears_progress: bool  # a progress row may exist for the request


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # A checkpoint fsyncs the database file (hundreds of ms on some disks): never inside a commit,
    # but from a thread of its own (`checkpoint.py`).
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


def event_row(reservation: Reservation, prompt: int, completion: int, charged: int, outcome: str) -> EventRow:
    key = reservation.key
    return (
        reservation.request_id,
        key.account_id,
        reservation.api_key_id,
        key.model,
        key.bucket,
        key.day,
        prompt,
        completion,
        charged,
        outcome,
        time.time(),
    )


def progress_row(reservation: Reservation, prompt: int, completion: int, at: float) -> ProgressRow:
    key, budget = reservation.key, reservation.budget
    return (
        reservation.request_id,
        key.account_id,
        reservation.api_key_id,
        key.model,
        key.bucket,
        key.day,
        budget.key.api_key_id if budget is not None else None,
        budget.key.period if budget is not None else None,
        prompt,
        completion,
        at,
    )


def commit(db: sqlite3.Connection, progress: Sequence[ProgressRow], settlements: Sequence[Settlement]) -> list[bool]:
    """Write progress rows and settlements in one transaction; says which settlements were charged.

    False: nothing to record, or the request id was already in the history (settled by an earlier
    process). Progress rows are written first: a settlement of the same request, later in the
    batch, then deletes its row.
    """
    events = [item.event for item in settlements if item.event is not None]
    db.execute("BEGIN IMMEDIATE")
    try:
        if progress:
            db.executemany(_UPSERT_PROGRESS, progress)
        if not events:
            fresh: list[bool] = []
        elif db.executemany(_INSERT_EVENT, events).rowcount == len(events):
            fresh = [True] * len(events)
        else:  # some ids were already there (a replay): start over, finding out which, one by one
            db.execute("ROLLBACK")
            db.execute("BEGIN IMMEDIATE")
            if progress:
                db.executemany(_UPSERT_PROGRESS, progress)
            fresh = [db.execute(_INSERT_EVENT, row).rowcount == 1 for row in events]
        flags = iter(fresh)
        inserted = [next(flags) if item.event is not None else False for item in settlements]
        _add_totals(db, settlements, inserted)
        cleared = [(item.request_id,) for item in settlements if item.clears_progress]
        if cleared:
            db.executemany(_DELETE_PROGRESS, cleared)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return inserted


def read_used(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    row = db.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class Recovered:
    requests: int
    tokens: int


def recover(db: sqlite3.Connection) -> Recovered:
    """Charge every request a dead process left open its last recorded progress, then forget them.

    Runs at start-up, before any window is loaded, under the ledger's lock (no other process can be
    serving them). Idempotent like settlement: an id already in the history charges nothing again.
    """
    if db.execute("SELECT 1 FROM open_reservations LIMIT 1").fetchone() is None:
        return Recovered(0, 0)  # the usual case, without waiting for the write lock
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute(
            "SELECT request_id, account_id, api_key_id, model, bucket, day, budget_key_id, budget_period,"
            " prompt_tokens, completion_tokens, updated_at FROM open_reservations"
        ).fetchall()
        settlements = []
        for rid, account, api_key, model, bucket, day, budget_key, period, prompt, completion, at in rows:
            prompt, completion = max(prompt, 0), max(completion, 0)
            charged = prompt + completion
            event: EventRow | None = None
            if charged:  # like settle: a charge of 0 with an outcome other than "ok" records nothing
                event = (rid, account, api_key, model, bucket, day, prompt, completion, charged, "recovered", at)
            budget = BudgetKey(budget_key, period) if budget_key is not None and period is not None else None
            settlements.append(Settlement(rid, event, WindowKey(account, model, bucket, day), budget, charged, False))
        inserted = [
            item.event is not None and db.execute(_INSERT_EVENT, item.event).rowcount == 1 for item in settlements
        ]
        _add_totals(db, settlements, inserted)
        db.execute("DELETE FROM open_reservations")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    charged = [item.charged for item, ok in zip(settlements, inserted, strict=True) if ok]
    return Recovered(len(charged), sum(charged))


def _add_totals(db: sqlite3.Connection, settlements: Sequence[Settlement], inserted: Sequence[bool]) -> None:
    totals: dict[WindowKey, int] = {}
    budgets: dict[BudgetKey, int] = {}
    for item, ok in zip(settlements, inserted, strict=True):
        if ok:
            totals[item.window] = totals.get(item.window, 0) + item.charged
            if item.budget is not None:
                budgets[item.budget] = budgets.get(item.budget, 0) + item.charged
    if totals:
        db.executemany(_UPSERT_USAGE, [(k.account_id, k.model, k.bucket, k.day, used) for k, used in totals.items()])
    if budgets:
        db.executemany(_UPSERT_BUDGET, [(k.api_key_id, k.period, used) for k, used in budgets.items()])
