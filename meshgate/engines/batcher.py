"""Micro-batching: requests that arrive while the model is busy run together in the next batch.

No artificial wait: a lone request runs at once; under load the queue fills during the running
batch and is drained into the next one, so batch size follows the load.
Inference runs in one worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Job(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]


class MicroBatcher(Generic[T, R]):
    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 64) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Job[T, R]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # number of batches run (observability, tests)

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, in order, computed in some batch together with other requests."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(items, future))
        return await future

    def _take_batch(self, first: _Job[T, R]) -> list[_Job[T, R]]:
        jobs = [first]
        size = len(first.items)
        while size < self._max_batch and not self._queue.empty():
            job = self._queue.get_nowait()
            if job.future.done():  # client went away before we got to it
                continue
            jobs.append(job)
            size += len(job.items)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first.future.done():
                continue
            jobs = self._take_batch(first)
            items = [item for job in jobs for item in job.items]
            try:
                results = await loop.run_in_executor(self._executor, self._fn, items)
            except Exception as exc:  # handed to each waiting request, which reports it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for job in jobs:
                end = start + len(job.items)
                if not job.future.done():
                    job.future.set_result(list(results[start:end]))
                start = end

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
