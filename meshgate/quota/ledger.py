"""The token ledger's interface: reserve before the work, settle exactly after it.

A window is (account, model, bucket, UTC day). `reserve` checks and reserves in one
atomic step, so concurrent requests can never together spend more than the window's
limit; `settle` charges what was really used and frees the rest of the reservation,
once per request id however often it is called.
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


@dataclass(slots=True)
class Reservation:
    request_id: str
    key: WindowKey
    amount: int  # tokens held until settlement
    limit: int
    api_key_id: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a reservation: `amount` tokens were reserved (0 = refused)."""

    amount: int
    limit: int
    remaining: int  # after this reservation
    reservation: Reservation | None


@dataclass(frozen=True, slots=True)
class WindowUsage:
    used: int  # settled
    reserved: int  # held by requests in flight


class Ledger(Protocol):
    async def reserve(
        self, request_id: str, key: WindowKey, limit: int, minimum: int, maximum: int, api_key_id: str | None
    ) -> Grant:
        """Reserve as much as is free up to `maximum`, but only if at least `minimum` is free."""
        ...

    async def settle(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, outcome: str = "ok"
    ) -> int:
        """Charge prompt+completion tokens (at most the reservation), release the rest; returns the charge."""
        ...

    async def window(self, key: WindowKey) -> WindowUsage: ...

    async def close(self) -> None: ...


def utc_day(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")


def window_reset(day: str) -> dt.datetime:
    """When the window of `day` ends: the next UTC midnight."""
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return start + dt.timedelta(days=1)
