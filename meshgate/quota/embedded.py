"""The embedded ledger: exact in one process, durable in SQLite, and the event loop never waits on it.

Windows live in a dict touched only from the event loop thread, so check-and-reserve
is atomic without locks and costs about a microsecond. Each settlement is committed to
SQLite (WAL, synchronous=NORMAL: no fsync, but a `kill -9` of the gateway loses no
committed row) before the response that carries its usage leaves the gateway:
`settle` counts the usage in memory at once and returns only after the COMMIT. The
settlements of one event-loop tick go to the writer thread (`writer.py`) as one batch,
and it commits whatever has queued up in one transaction (group commit). A commit that
fails — another process holds the write lock, the disk is full — keeps the charges in
memory (still counted in their windows) and is retried until durable: a slow or locked
database delays the answers that report usage, never the event loop, and never loses a
charge. A window's first use since start-up reads its total in a thread too (`reader.py`).

Reservations live in memory. What a running request has delivered (`progress`) is
flushed to `open_reservations` once a second; a restart charges each request left there
its last progress (outcome "recovered"), so a crash mid-stream still charges what was
streamed. Everything else a crash simply releases.

Key budgets are windows of the same kind, keyed by (API key, period), next to the
account windows: `reserve` checks and reserves both with no `await` in between, and
a settlement's budget total is upserted in the same transaction as its usage event.

One ledger per database: `dblock.py` holds an OS lock on it for the ledger's lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from meshgate.quota.checkpoint import Checkpointer
from meshgate.quota.dblock import DatabaseLock
from meshgate.quota.durable import (
    SELECT_BUDGET,
    SELECT_WINDOW,
    Settlement,
    connect,
    event_row,
    progress_row,
    recover,
)
from meshgate.quota.ledger import Budget, BudgetKey, Grant, Reservation, WindowKey, WindowUsage
from meshgate.quota.reader import Reader
from meshgate.quota.writer import Writer

log = logging.getLogger("meshgate.quota")

_K = TypeVar("_K", WindowKey, BudgetKey)


@dataclass(slots=True)
class _Window:
    used: int
    reserved: int
    # Settlements counted in `used` but not committed yet: a window with some must stay in
    # memory, or reloading it from the database would forget them.
    pending: int = 0


@dataclass(slots=True)
class _Pending:
    """A settlement counted in memory, waiting for its commit."""

    settlement: Settlement
    window: _Window
    budget_window: _Window | None
    waiter: asyncio.Future[int]


class EmbeddedLedger:
    def __init__(self, sqlite_path: Path, *, busy_timeout_ms: int = 1000, progress_interval: float = 1.0) -> None:
        self._lock = DatabaseLock(sqlite_path)  # first: nothing below may run next to another ledger
        try:
            self._recover(sqlite_path)
            self._reader = Reader(sqlite_path)
        except BaseException:
            self._lock.release()
            raise
        self._writer = Writer(sqlite_path, busy_timeout_ms)
        self._checkpointer = Checkpointer(sqlite_path)
        self._windows: dict[WindowKey, _Window] = {}
        self._budgets: dict[BudgetKey, _Window] = {}
        self._budget_keys: dict[str, list[BudgetKey]] = {}  # API key id -> its budget windows in memory
        self._loading: dict[WindowKey | BudgetKey, asyncio.Future[int]] = {}
        self._open: dict[str, Reservation] = {}
        self._pending: list[_Pending] = []
        self._flush_scheduled = False
        # Progress of requests in flight: the latest report, and what was last handed to the writer.
        self._progress: dict[str, tuple[Reservation, int, int]] = {}
        self._flushed: dict[str, tuple[int, int]] = {}
        self._progress_interval = progress_interval
        self._progress_timer: asyncio.TimerHandle | None = None
        self._closed = False

    @staticmethod
    def _recover(sqlite_path: Path) -> None:
        db = connect(sqlite_path, busy_timeout_ms=5000)
        try:
            recovered = recover(db)
        finally:
            db.close()
        if recovered.requests:
            log.warning(
                "charged %d requests left unsettled by a previous process their last recorded progress"
                " (%d tokens, outcome 'recovered')",
                recovered.requests,
                recovered.tokens,
            )

    # ------------------------------------------------------------ windows in memory

    async def _window(self, key: WindowKey) -> _Window:
        while (window := self._windows.get(key)) is None:
            params = (key.account_id, key.model, key.bucket, key.day)
            await self._load(key, self._windows, SELECT_WINDOW, params, lambda k: self._forget_old_days(k.day))
        return window

    async def _budget(self, key: BudgetKey) -> _Window:
        while (window := self._budgets.get(key)) is None:
            params = (key.api_key_id, key.period)
            await self._load(key, self._budgets, SELECT_BUDGET, params, self._forget_other_periods)
        return window

    async def _load(
        self,
        key: _K,
        table: dict[_K, _Window],
        sql: str,
        params: tuple[object, ...],
        on_insert: Callable[[_K], None],
    ) -> None:
        """Read a total off the event loop; it enters `table` in the same callback that ends the read.

        One read per key at a time, and none while the key is in memory: a key absent from memory
        has all its settlements committed, so the value read is exact when it is inserted.
        """
        future = self._loading.get(key)
        if future is None:
            future = self._loading[key] = self._reader.used(sql, params)
            future.add_done_callback(partial(self._loaded, key, table, on_insert))
        await asyncio.shield(future)
        # Awaiting a future that is already done does not yield, and its done-callback runs only on
        # a later turn of the loop: insert here too (idempotent), or a caller looping on the table
        # would spin without ever letting the callback run.
        self._loaded(key, table, on_insert, future)

    def _loaded(
        self, key: _K, table: dict[_K, _Window], on_insert: Callable[[_K], None], future: asyncio.Future[int]
    ) -> None:
        if self._loading.get(key) is future:
            del self._loading[key]
        if future.cancelled() or future.exception() is not None or key in table:
            return
        table[key] = _Window(used=future.result(), reserved=0)
        on_insert(key)

    def _forget_old_days(self, today: str) -> None:
        stale = [k for k, w in self._windows.items() if k.day < today and w.reserved == 0 and w.pending == 0]
        for k in stale:
            del self._windows[k]

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

    # ------------------------------------------------------------ the Ledger interface

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
        window = self._windows.get(key)
        budget_window = self._budgets.get(budget.key) if budget is not None else None
        while window is None or (budget is not None and budget_window is None):
            # First use since start-up: load off the loop, then look both up again, since other
            # requests ran meanwhile (the loop ends once neither needed to wait).
            window = await self._window(key)
            if budget is not None:
                budget_window = await self._budget(budget.key)
                if self._windows.get(key) is not window:
                    window = None
        # No `await` from here to the end: the checks and the reservations are one atomic step.
        free = limit - window.used - window.reserved
        refused_by = "window" if free < minimum or free <= 0 or request_id in self._open else None
        if budget is not None and budget_window is not None:
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

    def progress(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        # Memory only (this runs for every chunk of every stream); `_flush_progress` writes it.
        self._progress[reservation.request_id] = (reservation, prompt_tokens, completion_tokens)
        if self._progress_timer is None:
            self._progress_timer = asyncio.get_running_loop().call_later(self._progress_interval, self._flush_progress)

    def _flush_progress(self) -> None:
        """Hand the writer the progress rows that changed since the last flush (once a second)."""
        self._progress_timer = None
        now = time.time()
        rows = []
        settled = [request_id for request_id in self._progress if request_id not in self._open]
        for request_id in settled:  # reported after its settlement: settle() superseded it
            del self._progress[request_id]
        for request_id, (reservation, prompt, completion) in self._progress.items():
            if self._flushed.get(request_id) != (prompt, completion):
                self._flushed[request_id] = (prompt, completion)
                rows.append(progress_row(reservation, max(prompt, 0), max(completion, 0), now))
        if rows:
            self._writer.progress(rows)
        if self._progress and not self._closed:
            self._progress_timer = asyncio.get_running_loop().call_later(self._progress_interval, self._flush_progress)

    async def settle(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, outcome: str = "ok"
    ) -> int:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        request_id = reservation.request_id
        held = self._open.pop(request_id, None)
        if held is None:
            return 0  # already settled: settlement is idempotent per request id
        # A window holding a reservation is never dropped from memory: both are there.
        window = self._windows[held.key]
        window.reserved -= held.amount
        budget_window = None
        if held.budget is not None:
            budget_window = self._budgets[held.budget.key]
            budget_window.reserved -= held.amount
        self._progress.pop(request_id, None)
        clears_progress = self._flushed.pop(request_id, None) is not None
        # The whole usage, even above the reservation: the server decides what was really used.
        charged = max(prompt_tokens, 0) + max(completion_tokens, 0)
        record = charged > 0 or outcome == "ok"
        if not record and not clears_progress:
            return 0
        # Counted at once, so a reservation made before the commit already sees it (never overspends).
        window.used += charged
        window.pending += 1
        if budget_window is not None:
            budget_window.used += charged
            budget_window.pending += 1
        event = event_row(held, prompt_tokens, completion_tokens, charged, outcome) if record else None
        budget_key = held.budget.key if held.budget is not None else None
        settlement = Settlement(request_id, event, held.key, budget_key, charged, clears_progress)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._pending.append(_Pending(settlement, window, budget_window, waiter))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await waiter  # resolved only after COMMIT: the caller may then report the usage

    def _flush(self) -> None:
        """Hand every settlement made during this event-loop tick to the writer as one batch."""
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            settlements = [item.settlement for item in batch]
            self._writer.settle(asyncio.get_running_loop(), settlements, partial(self._committed, batch))

    def _committed(self, batch: list[_Pending], inserted: list[bool]) -> None:
        """On the event loop, once the batch is durable: resolve the waiting settles."""
        for item, ok in zip(batch, inserted, strict=True):
            # not ok: nothing to record, or the request id was already in the history (an earlier process)
            total = item.settlement.charged
            charged = total if ok else 0
            _uncount(item, total - charged)
            if not item.waiter.done():
                item.waiter.set_result(charged)

    async def window(self, key: WindowKey) -> WindowUsage:
        window = await self._window(key)
        return WindowUsage(window.used, window.reserved)

    async def budget_window(self, key: BudgetKey) -> WindowUsage:
        window = await self._budget(key)
        return WindowUsage(window.used, window.reserved)

    async def close(self) -> None:
        """Make everything durable (waiting, if the database is locked, until it is), then let go of it."""
        if self._closed:
            return
        self._closed = True
        if self._progress_timer is not None:
            self._progress_timer.cancel()
        self._flush_progress()  # requests that never settle are charged their progress on the next start
        if self._pending:
            self._flush()
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._reader.close)
        await asyncio.to_thread(self._checkpointer.stop)
        self._lock.release()


def _uncount(item: _Pending, tokens: int) -> None:
    """The settlement's commit is over: it is no longer pending; `tokens` of it were not charged after all."""
    item.window.used -= tokens
    item.window.pending -= 1
    if item.budget_window is not None:
        item.budget_window.used -= tokens
        item.budget_window.pending -= 1
