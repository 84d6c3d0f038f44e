"""The durable usage history in SQL, as the shared ledger writes and rebuilds it (SQLite or PostgreSQL).

A charge is one `usage_events` row (its request id is the key: the idempotency record) plus its tokens
added to `quota_usage` and `key_budget_usage`, in one transaction. Writing is idempotent and safe to
repeat (the ledger retries until a batch is durable, and two processes may write the same outbox
entry), so each event is classified against what the history already holds:

- inserted: new request id; the history adds its whole charge.
- own: the same event is there already (same created_at, outcome and total: this very entry was
  written before, by this process or one that adopted it); the history adds nothing.
- upgrade: the request was "recovered" (charged its progress after its process seemed dead) and
  this is its real settlement: the row takes the real usage and the history adds the difference.
- replay: another settlement of the request id is there; the history adds nothing.

Each event also says what Redis counted for it (`redis_charge`); the difference to what the history
added is the `correction` the ledger takes back from Redis, so the two always agree.

The three writes of a batch (events, windows, budgets) are one multi-row `INSERT ... ON CONFLICT`
each, as SQL text in the driver's own placeholders (`BatchSql`): both databases take the same
statements, and SQLAlchemy's per-row parameter processing, the largest cost of the Redis ledger's
history writer in the profile, is skipped (`docs/performance.md`). Reads stay SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, select, update

from meshgate.quota.ledger import BudgetKey, WindowKey
from meshgate.store.tables import key_budget_usage, quota_usage, usage_events


@dataclass(slots=True)
class UsageEvent:
    request_id: str
    account_id: int
    api_key_id: str | None
    model: str
    bucket: str
    day: str
    budget: BudgetKey | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    outcome: str
    created_at: float
    redis_charge: int  # what the ledger added to Redis for this event

    @property
    def window(self) -> WindowKey:
        return WindowKey(self.account_id, self.model, self.bucket, self.day)


@dataclass(frozen=True, slots=True)
class Written:
    charged: int  # what settle reports: the event's total, or 0 for a replayed request id
    correction: int  # tokens to take back from Redis (redis_charge - what the history added)


_EVENT_COLUMNS = (
    "request_id",
    "account_id",
    "api_key_id",
    "model",
    "bucket",
    "day",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "outcome",
    "created_at",
)


class BatchSql:
    """One multi-row INSERT, as text in the driver's placeholders, made once per number of rows."""

    def __init__(self, mark: str, table: str, columns: tuple[str, ...], tail: str) -> None:
        self.table = table
        self.columns = columns
        self._head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        self._row = "(" + ", ".join([mark] * len(columns)) + ")"
        self._tail = " " + tail
        self._made: dict[int, str] = {}

    def __call__(self, rows: int) -> str:
        sql = self._made.get(rows)
        if sql is None:
            sql = self._head + ", ".join([self._row] * rows) + self._tail
            if len(self._made) < 512:  # batches are at most the ledger's max_batch (500) rows
                self._made[rows] = sql
        return sql


class UsageHistory:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        mark = "%s" if engine.dialect.name == "postgresql" else "?"  # psycopg's and sqlite3's own
        self._insert_events = BatchSql(
            mark, usage_events.name, _EVENT_COLUMNS, "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
        )
        self._add_windows = BatchSql(
            mark,
            quota_usage.name,
            ("account_id", "model", "bucket", "day", "used"),
            "ON CONFLICT (account_id, model, bucket, day) DO UPDATE SET used = quota_usage.used + excluded.used",
        )
        self._add_budgets = BatchSql(
            mark,
            key_budget_usage.name,
            ("api_key_id", "period", "used"),
            "ON CONFLICT (api_key_id, period) DO UPDATE SET used = key_budget_usage.used + excluded.used",
        )

    # -- reads (rebuilding Redis)

    def window_used(self, key: WindowKey) -> int:
        with self.engine.connect() as conn:
            used = conn.execute(
                select(quota_usage.c.used).where(
                    quota_usage.c.account_id == key.account_id,
                    quota_usage.c.model == key.model,
                    quota_usage.c.bucket == key.bucket,
                    quota_usage.c.day == key.day,
                )
            ).scalar()
        return int(used or 0)

    def budget_used(self, key: BudgetKey) -> int:
        with self.engine.connect() as conn:
            used = conn.execute(
                select(key_budget_usage.c.used).where(
                    key_budget_usage.c.api_key_id == key.api_key_id, key_budget_usage.c.period == key.period
                )
            ).scalar()
        return int(used or 0)

    def current(
        self, day: str, periods: Iterable[str]
    ) -> tuple[list[tuple[WindowKey, int]], list[tuple[BudgetKey, int]]]:
        """Every window of `day` and every budget of `periods` the history has, with its used tokens."""
        with self.engine.connect() as conn:
            windows = [
                (WindowKey(row.account_id, row.model, row.bucket, row.day), int(row.used))
                for row in conn.execute(select(quota_usage).where(quota_usage.c.day == day))
            ]
            budgets = [
                (BudgetKey(row.api_key_id, row.period), int(row.used))
                for row in conn.execute(select(key_budget_usage).where(key_budget_usage.c.period.in_(list(periods))))
            ]
        return windows, budgets

    # -- writes

    def write(self, events: list[UsageEvent]) -> list[Written]:
        """Record a batch in one transaction (request ids must be distinct within it); safe to repeat."""
        with self.engine.begin() as conn:
            return self._write(conn, events)

    def _write(self, conn: Connection, events: list[UsageEvent]) -> list[Written]:
        # Sorted, so two processes writing overlapping batches lock rows in the same order (no deadlock).
        order = sorted(range(len(events)), key=lambda i: events[i].request_id)
        inserted = {row[0] for row in self._insert(conn, self._insert_events, [_row(events[i]) for i in order])}
        added = [e.total_tokens if e.request_id in inserted else 0 for e in events]
        results = [Written(e.total_tokens, e.redis_charge - e.total_tokens) for e in events]
        conflicts = [i for i in order if events[i].request_id not in inserted]
        if conflicts:
            existing = self._existing(conn, [events[i].request_id for i in conflicts])
            for i in conflicts:
                added[i], results[i] = self._resolve(conn, events[i], existing.get(events[i].request_id))
        self._add_totals(conn, events, added)
        return results

    def _existing(self, conn: Connection, request_ids: list[str]) -> dict[str, Any]:
        columns = (
            usage_events.c.request_id,
            usage_events.c.outcome,
            usage_events.c.total_tokens,
            usage_events.c.created_at,
        )
        return {
            row.request_id: row
            for row in conn.execute(select(*columns).where(usage_events.c.request_id.in_(request_ids)))
        }

    def _resolve(self, conn: Connection, event: UsageEvent, row: Any) -> tuple[int, Written]:
        """(tokens the history adds, the result) for an event whose request id is there already."""
        if row is None:  # gone since the insert saw it: cannot happen (rows are never deleted)
            return 0, Written(0, event.redis_charge)
        if (
            row.created_at == event.created_at
            and row.outcome == event.outcome
            and row.total_tokens == event.total_tokens
        ):
            # own: this very entry was written before, and whoever wrote it took its correction
            return 0, Written(event.total_tokens, 0)
        if row.outcome == "recovered" and event.outcome != "recovered":
            updated = conn.execute(
                update(usage_events)
                .where(and_(usage_events.c.request_id == event.request_id, usage_events.c.outcome == "recovered"))
                .values(
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    total_tokens=event.total_tokens,
                    outcome=event.outcome,
                    created_at=event.created_at,
                )
            )
            if updated.rowcount == 1:
                added = event.total_tokens - int(row.total_tokens)
                return added, Written(event.total_tokens, event.redis_charge - added)
            # Another writer upgraded it meanwhile: look again.
            again = self._existing(conn, [event.request_id]).get(event.request_id)
            if again is not None and again.outcome != "recovered":
                return self._resolve(conn, event, again)
            return 0, Written(0, event.redis_charge)
        return 0, Written(0, event.redis_charge)  # replay: the request id was settled before

    def _add_totals(self, conn: Connection, events: list[UsageEvent], added: list[int]) -> None:
        windows: dict[WindowKey, int] = {}
        budgets: dict[BudgetKey, int] = {}
        for event, tokens in zip(events, added, strict=True):
            if tokens:
                windows[event.window] = windows.get(event.window, 0) + tokens
                if event.budget is not None:
                    budgets[event.budget] = budgets.get(event.budget, 0) + tokens
        # Sorted (the keys' order), so concurrent writers lock rows in the same order; one row per key,
        # as PostgreSQL's ON CONFLICT DO UPDATE wants within one statement.
        if windows:
            rows = sorted((k.account_id, k.model, k.bucket, k.day, used) for k, used in windows.items())
            self._insert(conn, self._add_windows, rows)
        if budgets:
            self._insert(conn, self._add_budgets, sorted((k.api_key_id, k.period, used) for k, used in budgets.items()))

    def _insert(self, conn: Connection, statement: BatchSql, rows: list[tuple[Any, ...]]) -> Any:
        """One multi-row INSERT of `rows`; its result holds the RETURNING rows, where there are any."""
        return conn.exec_driver_sql(statement(len(rows)), tuple(value for row in rows for value in row))


def _row(event: UsageEvent) -> tuple[Any, ...]:
    """The event's values in `_EVENT_COLUMNS` order."""
    return (
        event.request_id,
        event.account_id,
        event.api_key_id,
        event.model,
        event.bucket,
        event.day,
        event.prompt_tokens,
        event.completion_tokens,
        event.total_tokens,
        event.outcome,
        event.created_at,
    )
