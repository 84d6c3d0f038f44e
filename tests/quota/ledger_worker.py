"""A gateway-like process on a shared RedisLedger, for the multi-process tests.

python -m tests.quota.ledger_worker hammer REDIS DB PREFIX LIMIT REQUESTS START_AT
    50 concurrent clients reserve and settle on one window from START_AT (epoch s) on;
    prints {"charged": tokens settled, "granted": reservations granted} as JSON.
python -m tests.quota.ledger_worker hang REDIS DB PREFIX TTL
    reserves 500 tokens, records progress (40 prompt, 20 completion), prints "ready" once
    that progress is in Redis, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from meshgate.quota.ledger import WindowKey
from meshgate.quota.redis_ledger import RedisLedger

KEY = WindowKey(7, "shared-model", "api", "2026-11-25")


async def hammer(redis: str, db: str, prefix: str, limit: int, requests: int, start_at: float) -> None:
    ledger = RedisLedger(redis, db, prefix=prefix)
    await ledger.window(KEY)  # connected and rebuilt before the start, so the processes really overlap
    await asyncio.sleep(max(start_at - time.time(), 0))
    charged: list[int] = []
    todo = iter(range(requests))

    async def client() -> None:
        for i in todo:
            want = random.randint(10, 400)
            grant = await ledger.reserve(f"{prefix}{i}-{random.random()}", KEY, limit, want, want, None)
            if grant.reservation is None:
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(random.random() / 500)
            charged.append(
                await ledger.settle(grant.reservation, random.randint(0, want // 2), random.randint(0, want // 2))
            )

    await asyncio.gather(*(client() for _ in range(50)))
    await ledger.close()
    print(json.dumps({"charged": sum(charged), "granted": len(charged)}), flush=True)


async def hang(redis: str, db: str, prefix: str, ttl: float) -> None:
    ledger = RedisLedger(redis, db, prefix=prefix, reservation_ttl=ttl)
    grant = await ledger.reserve("hung-request", KEY, 10_000, 500, 500, "key9")
    assert grant.reservation is not None
    ledger.progress(grant.reservation, 40, 20)
    await asyncio.sleep(ttl / 2)  # a tick or two: the progress is in Redis
    print("ready", flush=True)
    await asyncio.sleep(3600)


def main() -> None:
    mode, redis, db, prefix, *rest = sys.argv[1:]
    if mode == "hammer":
        asyncio.run(hammer(redis, db, prefix, int(rest[0]), int(rest[1]), float(rest[2])))
    else:
        asyncio.run(hang(redis, db, prefix, float(rest[0])))


if __name__ == "__main__":
    main()
