"""Reads of the ledger's durable totals in a thread of their own, so the event loop never waits on SQLite.

A window or budget period is read once, when first used after start-up; from then on it lives in
memory. WAL readers are not blocked by a writer, but a read can still wait (a cold disk, the WAL
index being rebuilt): that wait belongs to the request that needs the window, not to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshgate.quota.durable import connect, read_used

log = logging.getLogger("meshgate.quota")

_GIVE_UP_AFTER = 30.0  # seconds of failed reads before the request that needs the window fails


class Reader:
    def __init__(self, sqlite_path: Path) -> None:
        self._db = connect(sqlite_path, busy_timeout_ms=5000)
        # One thread: the connection is used by one thread at a time, and reads are rare.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="meshgate-ledger-read")

    def used(self, sql: str, params: tuple[object, ...]) -> asyncio.Future[int]:
        return asyncio.get_running_loop().run_in_executor(self._pool, self._read, sql, params)

    def _read(self, sql: str, params: tuple[object, ...]) -> int:
        started, delay = time.monotonic(), 0.05
        while True:
            try:
                return read_used(self._db, sql, params)
            except sqlite3.OperationalError:
                if time.monotonic() - started > _GIVE_UP_AFTER:
                    raise
                log.warning("reading a quota total failed; retrying in %.2f s", delay, exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db.close()
