"""Refresh cycles of API key budgets: UTC-aligned periods and when they end.

A period's id is its UTC start, "YYYY-MM-DDTHH:MMZ": the same instant always gives the
same id, on every gateway, so the id can key the durable usage of a budget. 8h periods
start at 00:00, 08:00 and 16:00 UTC, days at midnight, weeks on Monday, months on the 1st.
"""

from __future__ import annotations

import datetime as dt

CYCLES = ("8h", "daily", "weekly", "monthly")

# For "12000/day"-style labels.
PER = {"8h": "8h", "daily": "day", "weekly": "week", "monthly": "month"}

# The last period computed per cycle: (id, start, end). Most calls fall in it, and then cost
# one dict lookup and two comparisons instead of datetime arithmetic.
_last: dict[str, tuple[str, float, float]] = {}


def current_period(cycle: str, now: float) -> tuple[str, float]:
    """(the id of the period of `cycle` holding `now`, the epoch second it ends: the refresh)."""
    last = _last.get(cycle)
    if last is not None and last[1] <= now < last[2]:
        return last[0], last[2]
    start, end = _bounds(cycle, now)
    period = start.strftime("%Y-%m-%dT%H:%MZ")
    _last[cycle] = (period, start.timestamp(), end.timestamp())
    return period, end.timestamp()


def _bounds(cycle: str, now: float) -> tuple[dt.datetime, dt.datetime]:
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if cycle == "8h":
        start = midnight + dt.timedelta(hours=at.hour // 8 * 8)
        return start, start + dt.timedelta(hours=8)
    if cycle == "daily":
        return midnight, midnight + dt.timedelta(days=1)
    if cycle == "weekly":
        start = midnight - dt.timedelta(days=at.weekday())  # Monday is 0
        return start, start + dt.timedelta(days=7)
    if cycle == "monthly":
        start = midnight.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"unknown budget cycle {cycle!r} (one of {', '.join(CYCLES)})")
