"""Ledger fixtures: a migrated database, and ledgers that are shut down (or "killed") after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshgate.quota.embedded import EmbeddedLedger
from meshgate.store.engine import migrate


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    migrate(f"sqlite:///{path}")
    return path


def crash(ledger: EmbeddedLedger) -> None:
    """What `kill -9` leaves of a ledger: what was committed, nothing more (its lock released, as by the OS)."""
    ledger._closed = True
    if ledger._progress_timer is not None:
        ledger._progress_timer.cancel()
    ledger._writer.abandon()
    ledger._reader.close()
    ledger._checkpointer.stop()
    ledger._lock.release()


@pytest.fixture
def ledger_on() -> Iterator[Callable[..., EmbeddedLedger]]:
    """Make ledgers; whatever a test left open is "killed" at its end (threads stopped, lock released)."""
    made: list[EmbeddedLedger] = []

    def make(path: Path, **kwargs: object) -> EmbeddedLedger:
        ledger = EmbeddedLedger(path, **kwargs)  # type: ignore[arg-type]
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        if not ledger._closed:
            crash(ledger)
