#!/usr/bin/env python3
"""The ledger on its own: reserve+settle pairs per second at a given concurrency, embedded vs Redis.

Each of C concurrent clients loops reserve -> settle (a fresh request id each time, one window, a
limit that never binds) for --seconds; the history is a throw-away SQLite file (or --postgres URL
for the Redis ledger's history). Every settle returns only once its charge is committed, as on
the request path. Prints one line per ledger: pairs/s, and the p50/p99 of one pair.

    .venv/bin/python bench/ledger.py                      # 64 concurrent, 5 s each
    .venv/bin/python bench/ledger.py --concurrency 256 --seconds 10 --postgres postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import uvloop

from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Ledger, WindowKey, utc_day
from meshgate.quota.redis_ledger import RedisLedger
from meshgate.store.engine import migrate

KEY = WindowKey(1, "bench-model", "api", utc_day())


async def run(ledger: Ledger, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    await ledger.window(KEY)  # connected, window loaded: measure the steady state
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def client() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            grant = await ledger.reserve(f"bench-{next(counter)}", KEY, 10**15, 100, 100, None)
            assert grant.reservation is not None
            await ledger.settle(grant.reservation, 40, 50)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await ledger.close()
    return len(latencies) / elapsed, latencies


def report(name: str, rate: float, latencies: list[float]) -> None:
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:<28} {rate:>9,.0f} pairs/s   p50 {q[49] * 1000:6.2f} ms   p99 {q[98] * 1000:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", help="also run the Redis ledger with its history on this PostgreSQL URL")
    args = parser.parse_args()
    print(f"reserve+settle, {args.concurrency} concurrent, {args.seconds:g} s each (uvloop, one process)")
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, Any]] = [
            ("embedded (SQLite)", lambda: EmbeddedLedger(_migrated(Path(tmp) / "embedded.db"))),
        ]
        prefix = f"mgbench:{os.urandom(4).hex()}:"
        runs.append(
            (
                "redis (history on SQLite)",
                lambda: RedisLedger(args.redis, _sqlite(Path(tmp) / "redis.db"), prefix=prefix),
            )
        )
        if args.postgres:
            migrate(args.postgres)
            runs.append(
                ("redis (history on Postgres)", lambda: RedisLedger(args.redis, args.postgres, prefix=prefix + "pg:"))
            )
        try:
            for name, make in runs:
                report(name, *uvloop.run(run(make(), args.concurrency, args.seconds)))
        finally:
            client = redis.Redis.from_url(args.redis)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)


def _migrated(path: Path) -> Path:
    migrate(f"sqlite:///{path}")
    return path


def _sqlite(path: Path) -> str:
    migrate(f"sqlite:///{path}")
    return f"sqlite:///{path}"


if __name__ == "__main__":
    main()
