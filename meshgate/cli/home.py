"""MESHGATE_HOME and the secrets in it (the database, the saved key): private to their owner.

Files are created with their final permissions, so there is no moment at which another
user could open them; the home is 0700. A home or database left more open (by an older
version, or a umask of 022) is tightened on the next start, if it belongs to us.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from meshgate.config import Settings

log = logging.getLogger("meshgate")

_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite gives them the database's mode, if it exists first


def prepare_home(settings: Settings) -> None:
    """Make the home 0700 and the SQLite database 0600, before anything is written to them."""
    private_dir(settings.home)
    database = settings.sqlite_path
    if database is not None:
        if not database.parent.exists():
            database.parent.mkdir(mode=0o700, parents=True)
        private_file(database)


def private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Create an empty `path` readable by its owner only, or tighten it (and SQLite's companions)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        for each in (path, *(path.with_name(path.name + suffix) for suffix in _SQLITE_COMPANIONS)):
            with contextlib.suppress(FileNotFoundError):
                tighten(each, 0o600)


def tighten(path: Path, allowed: int) -> None:
    """Drop permission bits outside `allowed` from `path`, if it is ours."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == os.getuid() and mode & ~allowed:
        path.chmod(mode & allowed)
        log.info("%s was readable by others (%o); now %o", path, mode, mode & allowed)


def write_secret(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only from the first byte on.

    mkstemp opens with O_CREAT|O_EXCL and mode 0600; the rename is atomic, so a reader
    sees the old file or the whole new one.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
