"""Registered workers in Redis: every gateway process and machine sees the same ones.

    <p>wk:<id>          string  the registration (JSON), expiring `ttl` after its last heartbeat
    <p>wk:live          zset    id -> expiry (ms, Redis clock): what is registered, for the caps and listing
    <p>wk:t:<token id>  zset    the same, per worker token: its cap

Each operation is one Lua script, so the caps hold however many gateways register at once, and
every expiry is judged by Redis's clock, not by the gateways' (which may disagree). A registration
written by one gateway reaches the others at their next read (`live()`, about once a second).
"""

from __future__ import annotations

from dataclasses import asdict

import orjson
from redis.asyncio import Redis

from meshgate.workers.registry import Load, Registration, RegistryFull

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: live, token set, record. ARGV: id, registration JSON (no times), ttl ms, max total, max per token.
_REGISTER = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return -2
end
local data = cjson.decode(ARGV[2])
data['registered_at'] = now / 1000
data['heartbeat_at'] = now / 1000
redis.call('SET', KEYS[3], cjson.encode(data), 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: live, token set, record. ARGV: id, token id, load JSON, ttl ms.
_HEARTBEAT = (
    _NOW
    + """
local current = redis.call('GET', KEYS[3])
if not current then return 0 end
local ok, data = pcall(cjson.decode, current)
if not ok or data['token'] ~= ARGV[2] then return 0 end
data['load'] = cjson.decode(ARGV[3])
data['heartbeat_at'] = now / 1000
redis.call('SET', KEYS[3], cjson.encode(data), 'PX', ARGV[4])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""
)

# KEYS: live, token set, record. ARGV: id, token id.
_REMOVE = """
local current = redis.call('GET', KEYS[3])
if not current then return 0 end
local ok, data = pcall(cjson.decode, current)
if not ok or data['token'] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: live. ARGV: record key prefix. The records of every live id (nil where one just expired).
_LIVE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
local keys = {}
for i, id in ipairs(ids) do keys[i] = ARGV[1] .. id end
return redis.call('MGET', unpack(keys))
"""
)


class RedisRegistry:
    def __init__(self, redis: str | Redis, *, prefix: str = "meshgate:", ttl: float = 6.0) -> None:
        self._redis: Redis = Redis.from_url(redis, decode_responses=True) if isinstance(redis, str) else redis
        self._own = isinstance(redis, str)
        self.ttl = ttl
        self._ttl_ms = int(ttl * 1000)
        self._records = f"{prefix}wk:"
        self._live = f"{prefix}wk:live"
        self._tokens = f"{prefix}wk:t:"
        self._register = self._redis.register_script(_REGISTER)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._remove = self._redis.register_script(_REMOVE)
        self._list = self._redis.register_script(_LIVE)

    def _keys(self, worker_id: str, token_id: str) -> list[str]:
        return [self._live, self._tokens + token_id, self._records + worker_id]

    async def register(self, registration: Registration, max_total: int, max_per_token: int) -> None:
        keys = self._keys(registration.id, registration.token_id)
        args: list[str | int | bytes] = [
            registration.id,
            registration.to_json(),
            self._ttl_ms,
            max_total,
            max_per_token,
        ]
        result = await self._register(keys=keys, args=args)
        if result == -1:
            raise RegistryFull(f"the gateway already has {max_total} registered workers")
        if result == -2:
            raise RegistryFull(f"this worker token already has {max_per_token} registered workers")

    async def heartbeat(self, worker_id: str, token_id: str, load: Load) -> bool:
        args: list[str | int | bytes] = [worker_id, token_id, orjson.dumps(asdict(load)), self._ttl_ms]
        return bool(await self._heartbeat(keys=self._keys(worker_id, token_id), args=args) == 1)

    async def remove(self, worker_id: str, token_id: str) -> bool:
        return bool(await self._remove(keys=self._keys(worker_id, token_id), args=[worker_id, token_id]) == 1)

    async def live(self) -> list[Registration]:
        records = await self._list(keys=[self._live], args=[self._records])
        found = (Registration.from_json(raw) for raw in records if raw)
        return [r for r in found if r is not None]

    async def close(self) -> None:
        if self._own:
            await self._redis.aclose()
