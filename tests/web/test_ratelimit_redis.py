"""Log-in limits on the shared Redis: one count for every gateway process and server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from meshgate.web.ratelimit import RedisFailureLimiter
from tests.conftest import TEST_REDIS_URL, require_redis


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    require_redis()
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(client: Redis) -> AsyncIterator[str]:
    prefix = f"mgtest:{os.urandom(4).hex()}:login:"
    yield prefix
    keys = [key async for key in client.scan_iter(prefix + "*")]
    if keys:
        await client.delete(*keys)


async def test_two_processes_share_one_count(client: Redis, prefix: str) -> None:
    other_process = Redis.from_url(TEST_REDIS_URL)  # a client of its own, as another process has
    first = RedisFailureLimiter(client, prefix, limit=3, window=60)
    second = RedisFailureLimiter(other_process, prefix, limit=3, window=60)
    try:
        await first.fail("account:alice")
        await second.fail("account:alice")
        assert await first.retry_after("account:alice") == 0  # two of three
        await first.fail("account:alice")
        wait = await second.retry_after("account:alice")
        assert 59 < wait <= 60  # the third failure, in the other process, counts here
        assert await second.retry_after("account:bob") == 0  # per key
        await second.clear("account:alice")  # a successful log-in
        assert await first.retry_after("account:alice") == 0
    finally:
        await other_process.aclose()


async def test_failures_age_out_and_redis_keeps_no_more_than_the_window(client: Redis, prefix: str) -> None:
    limiter = RedisFailureLimiter(client, prefix, limit=2, window=1.0)
    for _ in range(5):
        await limiter.fail("ip:10.0.0.1")
    assert 0 < await limiter.retry_after("ip:10.0.0.1") <= 1.0
    assert await client.zcard(prefix + "ip:10.0.0.1") == 2  # only the newest `limit` are kept
    assert 0 < await client.pttl(prefix + "ip:10.0.0.1") <= 1000  # and only for the window
    await asyncio.sleep(1.1)
    assert await limiter.retry_after("ip:10.0.0.1") == 0


async def test_without_redis_the_process_counts_alone_rather_than_not_at_all() -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=2)
    limiter = RedisFailureLimiter(unreachable, "unreachable:", limit=2, window=60)
    try:
        assert await limiter.retry_after("account:carol") == 0
        await limiter.fail("account:carol")
        await limiter.fail("account:carol")
        assert await limiter.retry_after("account:carol") > 59
    finally:
        await unreachable.aclose()
