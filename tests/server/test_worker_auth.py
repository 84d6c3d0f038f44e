"""The worker API's rate limit per token: a bucket that refills, one per token, bounded in number."""

from __future__ import annotations

import pytest

from meshgate.protocol.errors import ApiError
from meshgate.server import worker_auth
from meshgate.server.worker_auth import WorkerRateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def allowed(limit: WorkerRateLimit, token: str, times: int) -> int:
    passed = 0
    for _ in range(times):
        try:
            limit.check(token)
            passed += 1
        except ApiError as error:
            assert error.status == 429 and error.code == "rate_limit_exceeded"
    return passed


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limit = WorkerRateLimit(rate=4, burst=10, clock=clock)
    assert allowed(limit, "a", 15) == 10
    clock.now += 1.0
    assert allowed(limit, "a", 15) == 4
    clock.now += 60
    assert allowed(limit, "a", 15) == 10  # refilled to the burst, never beyond


def test_the_refusal_says_when_to_come_back() -> None:
    clock = Clock()
    limit = WorkerRateLimit(rate=0.25, burst=1, clock=clock)
    limit.check("a")
    with pytest.raises(ApiError) as info:
        limit.check("a")
    assert dict(info.value.headers)[b"retry-after"] == b"4"
    clock.now += 4
    limit.check("a")


def test_tokens_have_their_own_buckets() -> None:
    limit = WorkerRateLimit(rate=1, burst=2, clock=Clock())
    assert allowed(limit, "a", 5) == 2
    assert allowed(limit, "b", 5) == 2


def test_sized_at_twice_what_a_full_fleet_needs() -> None:
    limit = WorkerRateLimit.for_fleet(workers_per_token=64, heartbeat_seconds=2.0)
    assert (limit.rate, limit.burst) == (64.0, 128)


def test_the_buckets_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_auth, "_MAX_TOKENS", 3)
    clock = Clock()
    limit = WorkerRateLimit(rate=1, burst=1, clock=clock)
    for token in "abcd":
        limit.check(token)
    limit.check("a")  # forgotten (the least recently seen): a full bucket again
    with pytest.raises(ApiError):
        limit.check("d")
