"""The ledger's writer thread: group commit off the event loop, retried until durable.

The event loop hands over one batch per tick (every settlement made during that tick) and the
progress rows of requests in flight once a second. The thread commits whatever has queued up in
one transaction: while it waits on the disk or on a lock, the batches that arrive meanwhile join
the next COMMIT, so a slow database makes the groups larger instead of the loop slower. A commit
that fails (another process holds the write lock, a full disk) keeps its batches in memory and
is retried with backoff, forever, logging; each batch's callback runs on the event loop once its
rows are durable, never before.

While the thread has nothing to do, a batch is first tried inline, on the caller's own connection
with no busy wait: a COMMIT that SQLite can take at once (tens of µs in WAL mode) costs less than
the two thread crossings and the GIL hand-offs of the queue (measured in docs/performance.md). If
the database is locked or the commit fails for any reason, the batch goes to the thread as
before. Only an idle thread makes inline commits safe: a later job must never overtake an earlier
one (a progress row committed after its request's settlement would be charged again on restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshgate.quota.durable import ProgressRow, Settlement, commit, connect

log = logging.getLogger("meshgate.quota")

_LOG_EVERY = 5.0  # seconds between warnings while commits keep failing


@dataclass(slots=True)
class _Settle:
    loop: asyncio.AbstractEventLoop
    settlements: Sequence[Settlement]
    done: Callable[[list[bool]], None]  # run on `loop` with which settlements were charged


@dataclass(slots=True)
class _Progress:
    rows: Sequence[ProgressRow]


_Job = _Settle | _Progress


class Writer:
    def __init__(
        self, sqlite_path: Path, busy_timeout_ms: int = 1000, max_backoff: float = 2.0, *, inline: bool = True
    ) -> None:
        self._path = sqlite_path
        # Short: a locked database fails a commit soon, so the retry picks up the batches queued since.
        self._busy_timeout_ms = busy_timeout_ms
        self._max_backoff = max_backoff
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Jobs handed to the thread (counted by the caller's thread) and finished (by the writer thread):
        # equal means the thread is idle and holds nothing that a commit made now could overtake.
        self._handed = 0
        self._finished = 0
        self._inline_db: sqlite3.Connection | None = connect(sqlite_path, 0) if inline else None
        self._stopping = False
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshgate-ledger-writer", daemon=True)
        self._thread.start()

    def settle(
        self, loop: asyncio.AbstractEventLoop, settlements: Sequence[Settlement], done: Callable[[list[bool]], None]
    ) -> None:
        """Make `settlements` durable, then call `done` on `loop` (at once, if committed inline)."""
        db = self._inline_db
        if db is not None and self._handed == self._finished:
            try:
                inserted = commit(db, (), settlements)
            except Exception:  # locked, full, failing: the thread retries it until durable
                pass
            else:
                done(inserted)
                return
        self._hand(_Settle(loop, settlements, done))

    def progress(self, rows: Sequence[ProgressRow]) -> None:
        self._hand(_Progress(rows))

    def _hand(self, job: _Job) -> None:
        self._handed += 1
        self._queue.put(job)

    def stop(self) -> None:
        """Commit everything handed over so far, then end. Blocks until then: call it from a thread."""
        self._queue.put(None)
        self._thread.join()
        self._close_inline()

    def abandon(self) -> None:
        """End at once, committing nothing more (what a `kill -9` would leave; for tests)."""
        self._abandoned.set()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._close_inline()

    def _close_inline(self) -> None:
        db, self._inline_db = self._inline_db, None
        if db is not None:
            db.close()

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        db = connect(self._path, self._busy_timeout_ms)
        try:
            while not self._stopping:
                first = self._queue.get()
                jobs: list[_Job] = []
                if first is None:
                    self._stopping = True
                else:
                    jobs.append(first)
                self._drain(jobs)
                if jobs and not self._write(db, jobs):
                    return  # abandoned
        finally:
            db.close()

    def _drain(self, jobs: list[_Job]) -> None:
        """Add every job queued so far (the group of the next commit)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._stopping = True
            else:
                jobs.append(job)

    def _write(self, db: sqlite3.Connection, jobs: list[_Job]) -> bool:
        """Commit `jobs` (retrying until it works), then hand the results back. False: abandoned."""
        failures, first_failure, logged_at = 0, 0.0, 0.0
        while True:
            if self._abandoned.is_set():
                return False
            progress: dict[str, ProgressRow] = {}
            settlements: list[Settlement] = []
            for job in jobs:
                if isinstance(job, _Progress):
                    progress.update((row[0], row) for row in job.rows)  # the latest progress of a request wins
                else:
                    settlements.extend(job.settlements)
            try:
                inserted = commit(db, list(progress.values()), settlements)
                break
            except Exception as exc:
                now = time.monotonic()
                if not failures:
                    first_failure = now
                failures += 1
                if now - logged_at >= _LOG_EVERY:
                    logged_at = now
                    log.warning(
                        "the ledger could not commit %d settlements and %d progress rows (%s); they are kept"
                        " in memory and retried until durable (failing for %.1f s)",
                        len(settlements),
                        len(progress),
                        exc,
                        now - first_failure,
                    )
                if self._abandoned.wait(min(0.05 * 2 ** min(failures - 1, 10), self._max_backoff)):
                    return False
                self._drain(jobs)  # what arrived meanwhile joins the retry
        if failures:
            log.warning(
                "the ledger's commits succeed again: %d settlements durable after %.1f s and %d failed attempts",
                len(settlements),
                time.monotonic() - first_failure,
                failures,
            )
        self._hand_back(jobs, inserted)
        self._finished += len(jobs)
        return True

    @staticmethod
    def _hand_back(jobs: list[_Job], inserted: list[bool]) -> None:
        # One wake-up of each event loop per commit, however many batches the commit held.
        results: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[list[bool]], None], list[bool]]]] = {}
        start = 0
        for job in jobs:
            if isinstance(job, _Settle):
                end = start + len(job.settlements)
                results.setdefault(job.loop, []).append((job.done, inserted[start:end]))
                start = end
        for loop, callbacks in results.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_run_callbacks, callbacks)


def _run_callbacks(callbacks: list[tuple[Callable[[list[bool]], None], list[bool]]]) -> None:
    for done, inserted in callbacks:
        done(inserted)
