"""Auto-pipelining of Lua script calls: the calls made during one event-loop tick share one round trip.

redis-py spends ~200 µs of CPU on a lone call (connection checkout, encoding, a read loop) but
~50 µs on each call of a pipeline, so under load the ledger sends what every concurrent request
asked for in this tick as one pipeline (EVALSHA each, in order, on one connection): the same group
commit the embedded ledger does for SQLite. A request still makes its two calls; they just travel
with other requests' calls. A script Redis does not have (it restarted) is loaded and the calls retried.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.exceptions import NoScriptError

try:
    import hiredis
except ImportError:  # optional: redis-py's own (pure Python) encoder then
    hiredis = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Script:
    text: str
    sha: str


@dataclass(slots=True)
class _Call:
    script: Script
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any]


def client(url: str, max_connections: int) -> Redis:
    """A client for the ledger: encoding in C where hiredis is there; beyond `max_connections` calls in
    flight a call waits for a connection instead of failing."""
    options: dict[str, Any] = {}
    if hiredis is not None and url.startswith("redis://"):  # TLS and unix sockets keep their own class
        options["connection_class"] = _HiredisConnection
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, decode_responses=True, **options
    )
    return Redis.from_pool(pool)


class _HiredisConnection(Connection):
    """redis-py's asyncio connection encodes commands in Python (~1 µs an argument); its sync one uses hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD": the server wants two arguments
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class ScriptBatcher:
    def __init__(self, redis: Redis, max_batch: int = 256) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    @staticmethod
    def script(text: str) -> Script:
        return Script(text, hashlib.sha1(text.encode()).hexdigest())

    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            task = asyncio.ensure_future(self._send(pending[start : start + self._max_batch]))
            self._sending.add(task)  # held until done: a task nobody references may be collected
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call], loaded: bool = False) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        missing = [call for call, result in zip(calls, results, strict=True) if isinstance(result, NoScriptError)]
        for call, result in zip(calls, results, strict=True):
            if call.future.done() or (isinstance(result, NoScriptError) and not loaded):
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)
        if missing and not loaded:
            try:
                for text in {call.script.text for call in missing}:
                    await self._redis.script_load(text)
            except Exception as exc:
                for call in missing:
                    if not call.future.done():
                        call.future.set_exception(exc)
                return
            await self._send(missing, loaded=True)

    async def close(self) -> None:
        """Wait for the pipelines in flight (their callers are waiting for them)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
