"""Budget refresh cycles: UTC-aligned periods, their ids and their ends, at and around every boundary."""

from __future__ import annotations

import datetime as dt

import pytest

from meshgate.quota.cycles import CYCLES, current_period


def at(text: str) -> float:
    """'2026-12-01T16:00:00' (UTC) as epoch seconds."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("cycle", "now", "period", "ends"),
    [
        # 8h: 00:00, 08:00, 16:00 UTC
        ("8h", "2026-12-01T00:00:00", "2026-12-01T00:00Z", "2026-12-01T08:00:00"),
        ("8h", "2026-12-01T07:59:59.999", "2026-12-01T00:00Z", "2026-12-01T08:00:00"),
        ("8h", "2026-12-01T08:00:00", "2026-12-01T08:00Z", "2026-12-01T16:00:00"),
        ("8h", "2026-12-01T16:00:00", "2026-12-01T16:00Z", "2026-12-02T00:00:00"),
        ("8h", "2026-12-01T23:59:59", "2026-12-01T16:00Z", "2026-12-02T00:00:00"),
        ("8h", "2026-12-31T20:00:00", "2026-12-31T16:00Z", "2027-01-01T00:00:00"),
        # daily: midnight UTC
        ("daily", "2026-12-01T00:00:00", "2026-12-01T00:00Z", "2026-12-02T00:00:00"),
        ("daily", "2026-12-01T23:59:59.999", "2026-12-01T00:00Z", "2026-12-02T00:00:00"),
        ("daily", "2026-02-28T12:00:00", "2026-02-28T00:00Z", "2026-03-01T00:00:00"),
        ("daily", "2028-02-28T12:00:00", "2028-02-28T00:00Z", "2028-02-29T00:00:00"),  # leap year
        ("daily", "2026-12-31T23:00:00", "2026-12-31T00:00Z", "2027-01-01T00:00:00"),
        # weekly: Monday 00:00 UTC (2026-11-30 is a Monday)
        ("weekly", "2026-11-30T00:00:00", "2026-11-30T00:00Z", "2026-12-07T00:00:00"),
        ("weekly", "2026-12-03T13:00:00", "2026-11-30T00:00Z", "2026-12-07T00:00:00"),
        ("weekly", "2026-12-06T23:59:59", "2026-11-30T00:00Z", "2026-12-07T00:00:00"),
        ("weekly", "2026-12-07T00:00:00", "2026-12-07T00:00Z", "2026-12-14T00:00:00"),
        ("weekly", "2027-01-01T10:00:00", "2026-12-28T00:00Z", "2027-01-04T00:00:00"),  # across the new year
        # monthly: the 1st, 00:00 UTC
        ("monthly", "2026-12-01T00:00:00", "2026-12-01T00:00Z", "2027-01-01T00:00:00"),
        ("monthly", "2026-12-31T23:59:59", "2026-12-01T00:00Z", "2027-01-01T00:00:00"),
        ("monthly", "2027-01-01T00:00:00", "2027-01-01T00:00Z", "2027-02-01T00:00:00"),
        ("monthly", "2027-01-31T12:00:00", "2027-01-01T00:00Z", "2027-02-01T00:00:00"),
        ("monthly", "2028-02-15T12:00:00", "2028-02-01T00:00Z", "2028-03-01T00:00:00"),
    ],
)
def test_period_and_its_end(cycle: str, now: str, period: str, ends: str) -> None:
    assert current_period(cycle, at(now)) == (period, at(ends))


@pytest.mark.parametrize("cycle", CYCLES)
def test_the_end_of_a_period_is_the_start_of_the_next(cycle: str) -> None:
    now = at("2026-12-30T21:17:00")
    for _ in range(30):  # across month and year ends
        period, ends = current_period(cycle, now)
        assert current_period(cycle, ends - 0.001) == (period, ends)
        following, _ = current_period(cycle, ends)
        assert following > period  # ids sort in time order
        assert following == dt.datetime.fromtimestamp(ends, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
        now = ends


def test_cached_period_does_not_leak_across_times() -> None:
    # the cache of the last period must answer only for instants inside it, earlier ones included
    assert current_period("daily", at("2026-12-05T10:00:00"))[0] == "2026-12-05T00:00Z"
    assert current_period("daily", at("2026-12-04T23:59:59"))[0] == "2026-12-04T00:00Z"
    assert current_period("daily", at("2026-12-05T00:00:00"))[0] == "2026-12-05T00:00Z"


def test_unknown_cycle() -> None:
    with pytest.raises(ValueError, match="unknown budget cycle 'yearly'"):
        current_period("yearly", at("2026-12-01T00:00:00"))
