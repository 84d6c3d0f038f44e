"""WAL checkpoints in a thread of their own: they fsync, so neither the event loop nor a commit waits for them."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("meshgate.quota")


class Checkpointer:
    """Copies the WAL into the database file every second, off the event loop.

    PASSIVE checkpoints never wait for (or block) the ledger's commits; they keep the WAL
    from growing without bound now that commits do not checkpoint themselves.
    """

    def __init__(self, sqlite_path: Path, interval: float = 1.0) -> None:
        self._path = sqlite_path
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshgate-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        try:
            while not self._stopped.wait(self._interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed; retrying in %.0f s", self._interval, exc_info=True)
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # another process holds the database: its next checkpoint will do
                log.warning("the last WAL checkpoint failed", exc_info=True)
        finally:
            db.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
