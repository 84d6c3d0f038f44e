"""The token ledger's interface: reserve before the work, settle exactly after it.

A window is (account, model, bucket, UTC day). A key budget is (API key, period of its
cycle; see `cycles.py`): a sub-key's own limit, on top of its account's windows.
`reserve` checks and reserves on the window and the budget in one atomic step, so
concurrent requests can never together reserve more than either limit; `settle` charges
what was really used to both and frees the rest of the reservation, once per request id
however often it is called.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WindowKey:
    account_id: int
    model: str
    bucket: str
    day: str  # YYYY-MM-DD, UTC


@dataclass(frozen=True, slots=True)
class BudgetKey:
    api_key_id: str
    period: str  # from cycles.current_period


@dataclass(frozen=True, slots=True)
class Budget:
    key: BudgetKey
    limit: int
    resets_at: float  # epoch seconds


@dataclass(slots=True)
class Reservation:
    request_id: str
    key: WindowKey
    amount: int  # tokens held until settlement, on the window and on the budget alike
    limit: int
    api_key_id: str | None = None
    budget: Budget | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a reservation: `amount` tokens were reserved (0 = refused)."""

    amount: int
    limit: int  # the window's
    remaining: int  # after this reservation: min(window free, budget free), never below 0
    reservation: Reservation | None
    # When refused: "budget" if the key budget had less free than `minimum`, else "window"
    # (the account's window was short, or the request id already holds a reservation).
    refused_by: str | None = None


@dataclass(frozen=True, slots=True)
class WindowUsage:
    used: int  # settled
    reserved: int  # held by requests in flight


class Ledger(Protocol):
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
        """Reserve as much as is free up to `maximum` but at least `minimum`, on the account's window and on
        the key's budget (if any) in one atomic step: both or neither.

        Free = min(window free, budget free), where a window's free is `limit - used - reserved` and a
        budget's is `budget.limit - used - reserved` of `budget.key` (settlements count in `used` as soon
        as `settle` is called, before they are durable). Refused if free < minimum, free <= 0 or
        `request_id` already holds a reservation: neither is touched, `reservation` is None and
        `refused_by` says which one was short ("window" if both were). Granted: `amount` = min(maximum,
        free) is added to the reserved tokens of both, held until `settle`. Grant.remaining is the smaller
        of the two free amounts after the reservation (0 if negative).
        """
        ...

    async def settle(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, outcome: str = "ok"
    ) -> int:
        """Charge prompt+completion tokens exactly (negatives count as 0) to the window AND the key budget,
        release the reservation; idempotent per request id; returns the charge.

        The charge is not capped at the reservation: the caller (the server) decides what was really used;
        a charge above the reservation may take the window and the budget over their limits by that one
        request (the server logs it). A request id settled before (by this process or, as far as the
        durable history knows, an earlier one) charges neither and returns 0. A charge of 0 with an
        outcome other than "ok" records nothing. Returns only once the charge is durable; a database that
        cannot take it yet (locked, full) delays the return, but neither fails it nor loses the charge.
        """
        ...

    def progress(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """What a running request has delivered so far. Cheap and synchronous (memory only); the ledger makes
        it durable at least once a second. After a crash, a restart charges each unsettled reservation its last
        recorded progress (outcome "recovered") and releases the rest; settle() supersedes it.

        Each call replaces the request's previous report (the totals so far, not increments; negatives
        count as 0), and is ignored once the request is settled. Progress is not counted in the window
        while the process lives (the reservation already holds those tokens): it only decides what a
        crash charges. The durable record of a request's progress goes in the same transaction that
        records its settlement, so a request is charged either its settlement or its progress, never
        both. Charged at recovery like a settlement: to the window of the reservation's day and to its
        key budget's period, idempotent per request id, nothing recorded if the progress is 0. A crash
        charges the last report that was durable, at most about a second older than the last report
        made; a request with none durable is released without a charge.
        """
        ...

    async def window(self, key: WindowKey) -> WindowUsage: ...

    async def budget_window(self, key: BudgetKey) -> WindowUsage:
        """Used (settled) and reserved tokens of a key budget's period."""
        ...

    async def close(self) -> None:
        """Make every settlement and progress report durable, then release the ledger's resources."""
        ...


def utc_day(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")


def window_reset(day: str) -> dt.datetime:
    """When the window of `day` ends: the next UTC midnight."""
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return start + dt.timedelta(days=1)
