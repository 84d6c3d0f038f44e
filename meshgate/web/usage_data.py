"""The numbers behind /usage and /admin: today's windows against the quotas, and daily history.

Today's rows are read from the ledger's windows exactly as `GET /api/v1/usage` reads them
(settled plus what requests in flight hold), so the page and the API agree. The history
comes from the usage events (`AccountStore.usage_history`), one point per UTC day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from meshgate.accounts.service import UsageDay
from meshgate.server.admission import today
from meshgate.server.state import Gateway

HISTORY_DAYS = 30


async def today_rows(gw: Gateway, account_id: int) -> list[dict[str, Any]]:
    """Per model and bucket the account may use: used, reserved, limit, remaining (tokens, this UTC day)."""
    return await gw.usage_rows(account_id)


def resets_at(gw: Gateway) -> float:
    return gw.admitter.reset_epoch(today())


def history_days(count: int = HISTORY_DAYS) -> list[str]:
    """The last `count` UTC days, oldest first, today last."""
    end = dt.datetime.strptime(today(), "%Y-%m-%d").date()
    return [(end - dt.timedelta(days=count - 1 - i)).isoformat() for i in range(count)]


async def history(gw: Gateway, account_id: int | None, count: int = HISTORY_DAYS) -> tuple[list[str], list[UsageDay]]:
    days = history_days(count)
    rows = await asyncio.to_thread(gw.store.usage_history, days[0], account_id)
    return days, rows


def chart(title: str, days: list[str], rows: list[UsageDay], series_of: Callable[[UsageDay], str]) -> dict[str, Any]:
    """One chart's data: a point per day for each series (tokens), ready for static/usage.js."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        per[series_of(row)][row.day] += row.tokens
    x = [int(dt.datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()) for d in days]
    series = [{"label": label, "values": [per[label].get(d, 0) for d in days]} for label in sorted(per)]
    return {
        "title": title,
        "days": days,
        "x": x,
        "series": series,
        "totals": {s["label"]: sum(s["values"]) for s in series},
    }
