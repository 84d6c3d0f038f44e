"""The shared ledger: exact quotas across any number of gateway processes, on one Redis.

Every check-and-reserve and every settlement is one Lua script (`redis_scripts.py`), atomic in
Redis, so concurrent processes can never together reserve more than a window or a budget allows.
A request makes two script calls for its quota and nothing else on its path touches Redis or the
database; the calls of one event-loop tick share a pipeline (`redis_batch.py`).

- Reservations have a deadline (`reservation_ttl`, 120 s). Each process renews its own in a
  background tick (with the progress `progress()` recorded), so a process killed with SIGKILL
  leaves nothing held for longer than the TTL: the scripts sweep expired reservations before they
  check, release them, and charge what each had delivered (outcome "recovered").
- Settled usage is also written to the SQL history (`history.py`): in batches, in a thread, retried
  until durable; `settle` returns once its charge is committed. Until then the charge waits in a
  Redis outbox that any process adopts if its writer died, so the history gets every charge Redis got.
- Redis may lose everything: a window or budget it does not have is rebuilt from the history on first
  touch (and today's at start-up), SETNX-style, so two processes rebuilding at once cannot double it.
  The gap: a charge Redis counted whose SQL commit had not finished when Redis was wiped is in the
  history, but a rebuild that read the history just before that commit misses it, so the window
  counts it only from its next rebuild (at most one group commit of charges, in processes alive then).
- A process that hangs for a whole TTL (alive, but not renewing) has its reservations recovered like a
  dead one's; its late settle then adds only the rest of its usage. Until the recovered entry is in
  the history too, Redis may count the recovered tokens twice (for up to `adopt_after`): it errs
  towards refusing, never towards overspending, and the history is exact throughout.
- `window()` is answered from the newest reply this process has seen for that window if it is at most
  `snapshot_seconds` old (so the rate-limit headers after a settle cost no round trip), else read.

Needs a standalone Redis (or one behind Sentinel) with `maxmemory-policy noeviction`: the scripts
touch keys they do not declare (the sweep), and an evicted window would be rebuilt from a history
that lags by the charges in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from meshgate.quota import redis_scripts as scripts
from meshgate.quota.cycles import CYCLES, current_period
from meshgate.quota.history import UsageEvent, UsageHistory, Written
from meshgate.quota.ledger import Budget, BudgetKey, Grant, Reservation, WindowKey, WindowUsage, utc_day, window_reset
from meshgate.quota.redis_batch import ScriptBatcher, client
from meshgate.quota.redis_keys import (
    SEP,
    budget_key,
    deadlines_key,
    marker_key,
    member,
    outbox_key,
    record_key,
    window_key,
)
from meshgate.store.engine import sync_engine

log = logging.getLogger("meshgate.quota")

_DAY = 86_400


@dataclass(slots=True)
class _Open:
    """A reservation of this process, renewed by its tick until settled."""

    member: str
    renewed_at: float  # monotonic
    prompt: int = 0
    completion: int = 0
    dirty: bool = False  # progress not sent to Redis yet


@dataclass(slots=True)
class _Entry:
    """An outbox entry on its way to the SQL history."""

    event: UsageEvent
    entry_id: str
    window: str  # Redis keys, for the correction
    budget: str
    waiter: asyncio.Future[int] | None  # the settle waiting for it; None if adopted from the outbox


class RedisLedger:
    def __init__(
        self,
        redis: str | Redis,
        database: str | Engine,
        *,
        prefix: str = "meshgate:",
        reservation_ttl: float = 120.0,
        tick_seconds: float = 1.0,
        adopt_after: float = 30.0,
        snapshot_seconds: float = 1.0,
        marker_ttl: int = 3 * _DAY,
        settle_timeout: float | None = None,
        max_batch: int = 500,
        max_connections: int = 64,
    ) -> None:
        self._redis: Redis = client(redis, max_connections) if isinstance(redis, str) else redis
        self._own_redis = isinstance(redis, str)
        self._engine = sync_engine(database) if isinstance(database, str) else database
        self._own_engine = isinstance(database, str)
        self._history = UsageHistory(self._engine)
        self._prefix = prefix
        self._deadlines = deadlines_key(prefix)
        self._outbox = outbox_key(prefix)
        self._ttl_ms = int(reservation_ttl * 1000)
        self._renew_every = reservation_ttl / 4  # three renewals may fail before a live reservation expires
        self._tick_seconds = min(tick_seconds, self._renew_every)
        self._adopt_ms = int(adopt_after * 1000)
        self._snapshot_seconds = snapshot_seconds
        self._marker_ttl = marker_ttl
        self._settle_timeout = settle_timeout
        self._max_batch = max_batch
        self._calls = ScriptBatcher(self._redis)
        self._reserve = ScriptBatcher.script(scripts.RESERVE)
        self._settle = ScriptBatcher.script(scripts.SETTLE)
        self._tick = ScriptBatcher.script(scripts.TICK)
        self._read = ScriptBatcher.script(scripts.WINDOW)
        self._seed = ScriptBatcher.script(scripts.SEED)
        self._ack = ScriptBatcher.script(scripts.ACK)
        self._open: dict[str, _Open] = {}
        self._seen: dict[str, tuple[int, float, WindowUsage]] = {}  # key -> (v, monotonic, usage)
        self._queue: list[_Entry] = []
        self._held: set[str] = set()  # outbox ids queued or being written by this process
        self._wake = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] | None = None

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
        self._start()
        wkey = window_key(self._prefix, key)
        bkey = budget_key(self._prefix, budget.key) if budget is not None else None
        keys = [wkey, record_key(self._prefix, request_id), self._deadlines]
        if bkey is not None:
            keys.append(bkey)
        args: list[Any] = [
            self._prefix,
            limit,
            minimum,
            maximum,
            budget.limit if budget is not None else 0,
            self._ttl_ms,
            request_id,
            self._marker_ttl,
            _record(key, api_key_id, budget),
        ]
        reply = await self._rebuilding(lambda: self._calls.call(self._reserve, keys, args), key, wkey, budget, bkey)
        amount, remaining, refused = int(reply[0]), int(reply[1]), int(reply[2])
        self._remember(wkey, reply[3:6])
        if bkey is not None:
            self._remember(bkey, reply[6:9])
        if refused:
            return Grant(0, limit, remaining, None, "window" if refused == 1 else "budget")
        reservation = Reservation(request_id, key, amount, limit, api_key_id, budget)
        self._open[request_id] = _Open(member(request_id, amount, wkey, bkey), time.monotonic())
        return Grant(amount, limit, remaining, reservation)

    async def settle(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, outcome: str = "ok"
    ) -> int:
        # Shielded: a caller cancelled mid-way must not leave a charge counted in Redis and never written.
        return await asyncio.shield(self._settle_one(reservation, prompt_tokens, completion_tokens, outcome))

    def progress(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """What a running request has delivered so far. Cheap and synchronous (memory only); the ledger makes
        it durable at least once a second. After a crash, a restart charges each unsettled reservation its last
        recorded progress (outcome "recovered") and releases the rest; settle() supersedes it."""
        held = self._open.get(reservation.request_id)
        if held is not None:
            held.prompt, held.completion, held.dirty = max(prompt_tokens, 0), max(completion_tokens, 0), True

    async def window(self, key: WindowKey) -> WindowUsage:
        self._start()
        name = window_key(self._prefix, key)
        return self._fresh(name) or await self._read_hash(
            name, lambda: self._history.window_used(key), _window_expiry(key.day)
        )

    async def budget_window(self, key: BudgetKey) -> WindowUsage:
        """Used (settled) and reserved tokens of a key budget's period."""
        self._start()
        name = budget_key(self._prefix, key)
        return self._fresh(name) or await self._read_hash(
            name, lambda: self._history.budget_used(key), _budget_expiry(key.period)
        )

    async def close(self) -> None:
        if self._tasks:
            tick, writer, preload = self._tasks
            for task in (tick, preload):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._tick_once()  # the last progress, so a reservation left open is charged it
            deadline = time.monotonic() + 10
            while (self._queue or self._held) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            writer.cancel()
            if self._acks:
                await asyncio.gather(*self._acks, return_exceptions=True)
            await self._calls.close()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
            self._tasks = []
        if self._own_redis:
            await self._redis.aclose()
        if self._own_engine:
            self._engine.dispose()

    # ------------------------------------------------------------ settlement

    async def _settle_one(self, reservation: Reservation, prompt: int, completion: int, outcome: str) -> int:
        self._start()
        request_id, key, budget = reservation.request_id, reservation.key, reservation.budget
        self._open.pop(request_id, None)
        prompt, completion = max(prompt, 0), max(completion, 0)
        charge = prompt + completion  # the whole usage, even above the reservation: the server decides
        wkey = window_key(self._prefix, key)
        bkey = budget_key(self._prefix, budget.key) if budget is not None else None
        created_at = time.time()
        keys = [wkey, record_key(self._prefix, request_id), marker_key(self._prefix, request_id)]
        keys += [self._deadlines, self._outbox] + ([bkey] if bkey is not None else [])
        args: list[Any] = [
            self._prefix,
            member(request_id, reservation.amount, wkey, bkey),
            reservation.amount,
            charge,
            "0" if charge == 0 and outcome != "ok" else "1",
            self._marker_ttl,
            request_id,
            key.account_id,
            reservation.api_key_id or "",
            key.model,
            key.bucket,
            key.day,
            budget.key.api_key_id if budget is not None else "",
            budget.key.period if budget is not None else "",
            prompt,
            completion,
            outcome,
            repr(created_at),
        ]
        reply = await self._rebuilding(lambda: self._calls.call(self._settle, keys, args), key, wkey, budget, bkey)
        self._remember(wkey, reply[4:7])
        if bkey is not None:
            self._remember(bkey, reply[7:10])
        entry_id = str(reply[1])
        if not entry_id:
            return int(reply[0])  # settled before, or nothing to record
        event = UsageEvent(
            request_id,
            key.account_id,
            reservation.api_key_id,
            key.model,
            key.bucket,
            key.day,
            budget.key if budget is not None else None,
            prompt,
            completion,
            charge,
            outcome,
            created_at,
            int(reply[2]),
        )
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(_Entry(event, entry_id, wkey, bkey or "", waiter))
        try:
            # Returns once durable in the history (the Ledger contract: a database that cannot take it yet
            # delays the return). With a `settle_timeout` it returns after that anyway: the charge is counted
            # in Redis, kept in the outbox, and written when the database is back.
            return await asyncio.wait_for(asyncio.shield(waiter), self._settle_timeout)
        except TimeoutError:
            log.warning("usage of %s is counted but not yet in the history (database down?); retrying", request_id)
            return charge

    def _enqueue(self, entry: _Entry) -> None:
        self._held.add(entry.entry_id)
        self._queue.append(entry)
        self._wake.set()

    async def _write_loop(self) -> None:
        """Group commit: everything settled while the previous batch was committing goes in the next one."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = _distinct(self._queue, self._max_batch)
            written = await self._write(batch)
            for entry, result in zip(batch, written, strict=True):
                if entry.waiter is not None and not entry.waiter.done():
                    entry.waiter.set_result(result.charged)
            # The next batch need not wait for this one's ack: acks of different entries are independent.
            ack = asyncio.create_task(self._acknowledge(batch, [r.correction for r in written]))
            self._acks.add(ack)
            ack.add_done_callback(self._acks.discard)

    async def _write(self, batch: list[_Entry]) -> list[Written]:
        """Write a batch to the history: retried while the database is unreachable, split when it refuses.

        A database that is down or locked is waited for (with backoff, forever). An event the database
        refuses outright (a value it cannot store) would be refused forever and hold back every charge
        queued behind it: the batch is written one event at a time instead, and a refused event is
        logged as an error and left out of the history. Redis still counts it, so no quota grows.
        """
        delay = 0.05
        while True:
            try:
                return await asyncio.to_thread(self._history.write, [e.event for e in batch])
            except Exception as exc:
                if _refused(exc):
                    if len(batch) > 1:
                        return [w for entry in batch for w in await self._write([entry])]
                    event = batch[0].event
                    log.error("the history refuses the usage event %r (%s); it is counted in Redis only", event, exc)
                    return [Written(event.redis_charge, 0)]
                log.warning("writing usage to the history failed; retrying in %.2f s", delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _acknowledge(self, batch: list[_Entry], corrections: list[int]) -> None:
        """Remove written entries from the outbox, applying their corrections to Redis."""
        args: list[Any] = []
        for entry, correction in zip(batch, corrections, strict=True):
            args += [entry.entry_id, entry.window, entry.budget, correction]
        for attempt in range(3):
            try:
                await self._calls.call(self._ack, [self._outbox], args)
                break
            except Exception:
                # Left in the outbox, the entries are adopted later and found written ("own").
                log.warning("removing written entries from the outbox failed", exc_info=attempt == 2)
                await asyncio.sleep(0.1)
        self._held.difference_update(e.entry_id for e in batch)

    # ------------------------------------------------------------ background: renewals, progress, sweep, adoption

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            try:
                await self._tick_once()
            except Exception:
                log.warning("ledger tick failed; retrying", exc_info=True)

    async def _tick_once(self) -> None:
        now = time.monotonic()
        renew: list[_Open] = []
        moved: list[_Open] = []
        progress: list[Any] = []
        for request_id, held in self._open.items():
            if now - held.renewed_at >= self._renew_every - self._tick_seconds:
                renew.append(held)
            if held.dirty:
                held.dirty = False
                moved.append(held)
                progress += [request_id, held.prompt, held.completion]
        args: list[Any] = [self._prefix, self._ttl_ms, self._marker_ttl, self._adopt_ms, len(renew)]
        args += [held.member for held in renew] + progress
        try:
            _swept, old = await self._calls.call(self._tick, [self._deadlines, self._outbox], args)
        except BaseException:
            for held in moved:
                held.dirty = True  # sent next time
            raise
        for held in renew:
            held.renewed_at = now
        for entry_id, fields in old:
            if entry_id not in self._held:
                self._enqueue(_adopted(entry_id, fields))
        stale = [k for k, (_, at, _) in self._seen.items() if now - at > self._snapshot_seconds]
        for k in stale:
            del self._seen[k]

    async def _preload(self) -> None:
        """Rebuild today's windows and the current budget periods Redis does not have (after it lost them)."""
        try:
            periods = {current_period(cycle, time.time())[0] for cycle in CYCLES}
            windows, budgets = await asyncio.to_thread(self._history.current, utc_day(), periods)
            seeds = [(window_key(self._prefix, k), used, _window_expiry(k.day)) for k, used in windows]
            seeds += [(budget_key(self._prefix, k), used, _budget_expiry(k.period)) for k, used in budgets]
            for start in range(0, len(seeds), 500):
                await self._seed_keys(seeds[start : start + 500])
        except Exception:
            log.warning("preloading today's windows into Redis failed (they rebuild on first use)", exc_info=True)

    # ------------------------------------------------------------ rebuilding from the history

    async def _rebuilding(
        self,
        call: Callable[[], Awaitable[Any]],
        key: WindowKey,
        wkey: str,
        budget: Budget | None,
        bkey: str | None,
    ) -> Any:
        """Run a reserve or settle script; if Redis lacks the window or budget, rebuild it and run it again."""
        for _ in range(5):
            reply = await call()
            if int(reply[0]) != -1:
                return reply
            seeds = []
            if int(reply[1]):
                seeds.append((wkey, await asyncio.to_thread(self._history.window_used, key), _window_expiry(key.day)))
            if int(reply[2]) and budget is not None and bkey is not None:
                used = await asyncio.to_thread(self._history.budget_used, budget.key)
                seeds.append((bkey, used, _budget_expiry(budget.key.period)))
            await self._seed_keys(seeds)
        raise RuntimeError(f"Redis keeps losing {wkey}: is it evicting keys (maxmemory-policy must be noeviction)?")

    async def _read_hash(self, name: str, used_in_history: Callable[[], int], expire_at: int) -> WindowUsage:
        for _ in range(5):
            reply = await self._calls.call(self._read, [name, self._deadlines], [self._prefix, self._marker_ttl])
            if int(reply[0]) != -1:
                self._remember(name, reply)
                return WindowUsage(int(reply[0]), int(reply[1]))
            await self._seed_keys([(name, await asyncio.to_thread(used_in_history), expire_at)])
        raise RuntimeError(f"Redis keeps losing {name}: is it evicting keys (maxmemory-policy must be noeviction)?")

    async def _seed_keys(self, seeds: list[tuple[str, int, int]]) -> None:
        if seeds:
            await self._calls.call(
                self._seed, [name for name, _, _ in seeds], [v for _, used, at in seeds for v in (used, at)]
            )

    # ------------------------------------------------------------ snapshots, lifecycle

    def _remember(self, name: str, state: list[Any]) -> None:
        """Keep the newest state of a window seen in a reply (replies of concurrent calls arrive in any order)."""
        used, reserved, version = int(state[0]), int(state[1]), int(state[2])
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is None or version >= seen[0] or now - seen[1] > self._snapshot_seconds:
            self._seen[name] = (version, now, WindowUsage(used, reserved))

    def _fresh(self, name: str) -> WindowUsage | None:
        seen = self._seen.get(name)
        if seen is not None and time.monotonic() - seen[1] <= self._snapshot_seconds:
            return seen[2]
        return None

    def _start(self) -> None:
        if self._tasks is None:
            self._tasks = [
                asyncio.create_task(self._tick_loop(), name="meshgate-ledger-tick"),
                asyncio.create_task(self._write_loop(), name="meshgate-ledger-history"),
                asyncio.create_task(self._preload(), name="meshgate-ledger-preload"),
            ]


def _record(key: WindowKey, api_key_id: str | None, budget: Budget | None) -> str:
    """A reservation's record in Redis: what the history needs if its process dies, then its progress."""
    fields = [str(key.account_id), api_key_id or "", key.model, key.bucket, key.day]
    fields += [budget.key.api_key_id, budget.key.period] if budget is not None else ["", ""]
    return SEP.join([*fields, "0", "0"])


def _distinct(queue: list[_Entry], limit: int) -> tuple[list[_Entry], list[_Entry]]:
    """Up to `limit` entries with distinct request ids (a history batch needs them), and the rest, in order."""
    batch: list[_Entry] = []
    rest: list[_Entry] = []
    ids: set[str] = set()
    for entry in queue:
        if len(batch) < limit and entry.event.request_id not in ids:
            ids.add(entry.event.request_id)
            batch.append(entry)
        else:
            rest.append(entry)
    return batch, rest


def _adopted(entry_id: str, fields: list[str]) -> _Entry:
    """An outbox entry whose writer is gone (or slow): written by whichever process gets to it."""
    f = dict(zip(fields[::2], fields[1::2], strict=True))
    prompt, completion = int(f["p"]), int(f["c"])
    event = UsageEvent(
        f["rid"],
        int(f["a"]),
        f["k"] or None,
        f["m"],
        f["u"],
        f["d"],
        BudgetKey(f["bk"], f["bp"]) if f["bk"] else None,
        prompt,
        completion,
        prompt + completion,
        f["o"],
        float(f["ts"]),
        int(f["x"]),
    )
    return _Entry(event, entry_id, f["w"], f["b"], None)


def _window_expiry(day: str) -> int:
    """When Redis may drop a window: a day after it ends (a request may settle after midnight)."""
    return max(int(window_reset(day).timestamp()) + _DAY, int(time.time()) + _DAY)


def _budget_expiry(period: str) -> int:
    """When Redis may drop a budget period: 33 days after it starts outlasts the longest cycle (a month)."""
    try:
        start = dt.datetime.strptime(period, "%Y-%m-%dT%H:%MZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        start = time.time()
    return max(int(start) + 33 * _DAY, int(time.time()) + _DAY)


def _refused(exc: Exception) -> bool:
    """Will the database refuse these rows however often they are sent? (Not: is it down or busy.)"""
    if isinstance(exc, DataError | IntegrityError):
        return True
    return not isinstance(exc, DBAPIError | OSError)  # a row that cannot even be built (TypeError, ...)
