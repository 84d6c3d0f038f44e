"""MicroBatcher: concurrent submissions share batches, results go back in order, the loop stays free."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from meshgate.engines.batcher import MicroBatcher


async def test_concurrent_submissions_are_batched_and_loop_stays_free() -> None:
    sizes: list[int] = []
    threads: set[str] = set()

    def slow_double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        threads.add(threading.current_thread().name)
        time.sleep(0.1)  # blocking "inference"
        return [2 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(slow_double, max_batch=64)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))
    tick_task.cancel()
    await batcher.close()

    assert results == [[2 * i, 2 * (i + 100)] for i in range(20)]
    assert len(sizes) < 20  # requests shared batches
    assert max(sizes) > 2
    assert threading.main_thread().name not in threads
    assert ticks >= 10  # the event loop kept running during inference


async def test_max_batch_is_respected_and_errors_reach_every_caller() -> None:
    sizes: list[int] = []

    def fn(items: list[str]) -> list[str]:
        sizes.append(len(items))
        time.sleep(0.02)
        if "boom" in items:
            raise ValueError("bad input")
        return [s.upper() for s in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(fn, max_batch=4)
    out = await asyncio.gather(*(batcher.submit(["a"]) for _ in range(10)))
    assert out == [["A"]] * 10
    assert max(sizes) <= 4
    with pytest.raises(ValueError, match="bad input"):
        await batcher.submit(["boom"])
    assert await batcher.submit(["ok"]) == ["OK"]  # the batcher survives a failed batch
    await batcher.close()
