"""One embedded ledger per database: an OS lock on a file next to it, held for the ledger's lifetime.

The embedded ledger keeps its windows in the memory of one process. A second server on the same
database would keep windows of its own and so double every quota; it must refuse to start. An
`flock` is released by the kernel however the holder ends (`kill -9` included), so nothing stale
is ever left to clean up. The CLI does not take the lock: it writes accounts, keys and overrides
through SQLite's own locking, which the server picks up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DatabaseInUse(SystemExit):
    """Another process holds the database's ledger lock.

    A `SystemExit` on purpose: nothing can run on a database another ledger owns, so `meshgate
    serve` ends with this message and a non-zero exit code, without a traceback.
    """


class DatabaseLock:
    def __init__(self, sqlite_path: Path) -> None:
        self.path = sqlite_path.with_name(sqlite_path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(self._fd)
            self.release()
            raise DatabaseInUse(
                f"meshgate: another meshgate server ({holder}) is already using the database {sqlite_path}."
                " Each server keeps its quota windows in its own memory, so two servers on one database"
                " would double every quota. Run one server per database (stop the other one first), or"
                " use the shared ledger to run several."
            ) from None
        # Who holds it, for the message above (the lock itself is the flock, not this content).
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
