#!/usr/bin/env python3
"""The usage history's batch write on its own: our multi-row SQL text against SQLAlchemy Core, one run.

`UsageHistory.write` is what the Redis ledger's writer thread runs for every batch of settlements.
Its three INSERTs are SQL text in the driver's placeholders (`history.BatchSql`); `CoreHistory`
below is the same class with those INSERTs made by SQLAlchemy Core (as before the change), so the
two are measured side by side: alternating rounds on fresh request ids, the same batch sizes, on
SQLite (a throw-away file) and PostgreSQL (a throw-away schema, when one can be reached).

    .venv/bin/python bench/history.py                       # 300 batches per size and kind
    .venv/bin/python bench/history.py --batches 1000 --postgres postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from meshgate.quota.history import BatchSql, UsageEvent, UsageHistory
from meshgate.quota.ledger import BudgetKey, utc_day
from meshgate.store.engine import migrate, sync_engine
from meshgate.store.tables import key_budget_usage, quota_usage, usage_events

SIZES = (1, 8, 32, 128)
_ids = itertools.count()


class CoreHistory(UsageHistory):
    """The baseline: the same writes through SQLAlchemy Core's INSERT ... ON CONFLICT (built once)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        windows, budgets = insert(quota_usage), insert(key_budget_usage)
        self._core = {
            usage_events.name: insert(usage_events)
            .on_conflict_do_nothing(index_elements=["request_id"])
            .returning(usage_events.c.request_id),
            quota_usage.name: windows.on_conflict_do_update(
                index_elements=["account_id", "model", "bucket", "day"],
                set_={"used": quota_usage.c.used + windows.excluded.used},
            ),
            key_budget_usage.name: budgets.on_conflict_do_update(
                index_elements=["api_key_id", "period"],
                set_={"used": key_budget_usage.c.used + budgets.excluded.used},
            ),
        }

    def _insert(self, conn: Connection, statement: BatchSql, rows: list[tuple[Any, ...]]) -> Any:
        params = [dict(zip(statement.columns, row, strict=True)) for row in rows]
        return conn.execute(self._core[statement.table], params)


def batch(size: int) -> list[UsageEvent]:
    """`size` settlements of new request ids over 50 accounts, a third with a key budget."""
    events = []
    for _ in range(size):
        n = next(_ids)
        budget = BudgetKey(f"key{n % 7}", "2026-12-01T00") if n % 3 == 0 else None
        events.append(
            UsageEvent(
                f"bench-{os.getpid()}-{n}",
                n % 50,
                None if budget is None else budget.api_key_id,
                "bench-model",
                "api",
                utc_day(),
                budget,
                40,
                50,
                90,
                "ok",
                time.time(),
                90,
            )
        )
    return events


def measure(history: UsageHistory, size: int, batches: int) -> tuple[list[float], list[float]]:
    """(wall times, CPU times of this thread) of `batches` writes: the CPU is what the gateway pays."""
    wall, cpu = [], []
    for _ in range(batches):
        events = batch(size)
        started, started_cpu = time.perf_counter(), time.thread_time()
        written = history.write(events)
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)
        assert all(w.charged == 90 and w.correction == 0 for w in written)
    return wall, cpu


def compare(name: str, engine: Engine, batches: int, rounds: int = 4) -> None:
    ours, core = UsageHistory(engine), CoreHistory(engine)
    measure(ours, 8, 50)  # warm: connections, statement caches, the tables' first pages
    measure(core, 8, 50)
    print(f"\n{name}: µs per batch, medians of {rounds} alternating rounds of {batches // rounds} batches")
    print(
        f"{'events / batch':>15} | {'CPU: SQL text':>13} {'Core':>7} {'ratio':>6} | {'wall: SQL text':>14} {'Core':>7}"
    )
    for size in SIZES:
        wall: dict[str, list[float]] = {"ours": [], "core": []}
        cpu: dict[str, list[float]] = {"ours": [], "core": []}
        for _ in range(rounds):
            for kind, history in (("ours", ours), ("core", core)):
                w, c = measure(history, size, batches // rounds)
                wall[kind] += w
                cpu[kind] += c
        a, b = (statistics.median(cpu[k]) * 1e6 for k in ("ours", "core"))
        x, y = (statistics.median(wall[k]) * 1e6 for k in ("ours", "core"))
        print(f"{size:>15} | {a:>13.0f} {b:>7.0f} {b / a:>5.2f}x | {x:>14.0f} {y:>7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        url = f"sqlite:///{Path(home) / 'history.db'}"
        migrate(url)
        compare("SQLite", sync_engine(url), args.batches)
    schema = f"bench_history_{os.urandom(4).hex()}"
    admin = create_engine(args.postgres, poolclass=NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # PostgreSQL is optional here
        print(f"\nPostgreSQL not measured: {exc}")
        return
    try:
        joiner = "&" if "?" in args.postgres else "?"
        url = f"{args.postgres}{joiner}options=-csearch_path%3D{schema}"
        migrate(url)
        compare("PostgreSQL", sync_engine(url), args.batches)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
