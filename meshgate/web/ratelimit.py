"""Failed log-ins counted per account and per client address, in bounded memory.

Each key keeps the times of its recent failures (at most `limit` of them); when it has
`limit` inside the window, further attempts are refused until the oldest ages out.

Two implementations of one `FailureLimiter` interface:
- `MemoryFailureLimiter`, one process's: at most `max_keys` keys, dropping the least recently
  failed, so a flood of made-up names or addresses cannot grow it without bound.
- `RedisFailureLimiter`, every process's and server's on the shared Redis (MESHGATE_REDIS_URL):
  with `serve --processes N` or replicas, N processes must not allow N times the attempts. A key
  is a sorted set of failure times that expires with the window, so Redis holds no more than the
  keys that failed in the last window. If Redis cannot be reached, the process counts in memory
  meanwhile (limited per process, never unlimited) and says so in the log.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("meshgate.web")


class FailureLimiter(Protocol):
    async def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again; 0 if it may now."""
        ...

    async def fail(self, key: str) -> None: ...

    async def clear(self, key: str) -> None: ...


class MemoryFailureLimiter:
    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        self.limit = max(limit, 1)
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_at(self, key: str, now: float) -> float:
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def fail_at(self, key: str, now: float) -> None:
        times = self._failures.pop(key, None) or deque(maxlen=self.limit)
        times.append(now)
        self._failures[key] = times  # most recent at the end
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    async def retry_after(self, key: str) -> float:
        return self.wait_at(key, time.monotonic())

    async def fail(self, key: str) -> None:
        self.fail_at(key, time.monotonic())

    async def clear(self, key: str) -> None:
        self._failures.pop(key, None)


# KEYS[1]: the key's failure times; ARGV: now, window (s), limit. The wait, as a string (Lua numbers
# come back from Redis as integers).
_WAIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then return '0' end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(oldest[2] + ARGV[2] - ARGV[1])
"""
# ARGV: now, window (s), limit, a member unique to this failure. Keeps the newest `limit` only.
_FAIL = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return 1
"""


class RedisFailureLimiter:
    """Failure counts shared by every gateway process on one Redis; wall-clock times, as they span machines.
    The client is the caller's (both of a process's limiters share one), and so is closing it."""

    def __init__(self, redis: Redis, prefix: str, limit: int, window: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limit = max(limit, 1)
        self.window = window
        self._wait = self._redis.register_script(_WAIT)
        self._fail = self._redis.register_script(_FAIL)
        self._fallback = MemoryFailureLimiter(limit, window)  # while Redis cannot be reached
        self._down = False

    def _unreachable(self, exc: RedisError) -> None:
        if not self._down:
            log.warning("log-in limits: Redis unreachable (%s); counting in this process meanwhile", exc)
        self._down = True

    async def retry_after(self, key: str) -> float:
        try:
            wait = float(await self._wait(keys=[self._prefix + key], args=[time.time(), self.window, self.limit]))
        except RedisError as exc:
            self._unreachable(exc)
            return await self._fallback.retry_after(key)
        self._down = False
        return max(wait, await self._fallback.retry_after(key))

    async def fail(self, key: str) -> None:
        now = time.time()
        try:
            await self._fail(
                keys=[self._prefix + key], args=[now, self.window, self.limit, f"{now}:{os.urandom(6).hex()}"]
            )
        except RedisError as exc:
            self._unreachable(exc)
            await self._fallback.fail(key)

    async def clear(self, key: str) -> None:
        await self._fallback.clear(key)
        try:
            await self._redis.delete(self._prefix + key)
        except RedisError as exc:
            self._unreachable(exc)
