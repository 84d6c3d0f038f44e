"""`/metrics` of `serve --processes N`: every process's numbers, whichever process answers the scrape.

The kernel hands a scrape to any one of the processes, so each would report only its own share,
and the counters Prometheus saw would jump between processes. Instead, each process writes its
numbers (`Metrics.snapshot`) once a second, and at shutdown, to `<dir>/<index>.json` in a directory
the supervisor made for this run (`MESHGATE_METRICS_DIR`); a scrape sums its own live numbers and
the other files. A process started again in a dead one's place (same `MESHGATE_PROCESS_INDEX`)
adds the dead one's last counters to its own, so the sums only grow: counters stay monotonic
across restarts for scrapes more than a second apart, except for what a process killed with
SIGKILL counted in its last second. In-flight gauges count only processes that are alive.

Off the hot path: a request touches none of this; the writer is a background task and the
reads happen per scrape.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from meshgate.server.metrics import Metrics

log = logging.getLogger("meshgate.metrics")

DIR_ENV = "MESHGATE_METRICS_DIR"
INDEX_ENV = "MESHGATE_PROCESS_INDEX"
WRITE_EVERY = 1.0  # seconds: how stale another process's numbers can be in a scrape


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None  # gone, or being replaced: the next scrape reads it
    return data if isinstance(data, dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedMetrics:
    """One process's part in a run's shared metrics directory."""

    def __init__(self, metrics: Metrics, directory: Path, index: int) -> None:
        self.metrics = metrics
        self.directory = directory
        self.path = directory / f"{index}.json"
        previous = _read(self.path)  # the process this one replaces, if any: its counters carry on
        self._carried: dict[str, Any] | None = previous.get("numbers") if previous else None

    @classmethod
    def from_env(cls, metrics: Metrics) -> SharedMetrics | None:
        directory = os.environ.get(DIR_ENV)
        if not directory:
            return None
        return cls(metrics, Path(directory), int(os.environ.get(INDEX_ENV, "0")))

    def _carried_on(self) -> list[tuple[dict[str, Any], bool]]:
        """The predecessor's counters (its process is gone: no gauges), to add to this process's."""
        return [(self._carried, False)] if self._carried is not None else []

    def write(self) -> None:
        numbers = self.metrics.summed(self._carried_on()).snapshot()
        payload = orjson.dumps({"pid": os.getpid(), "numbers": numbers})
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(payload)
        os.replace(partial, self.path)  # a reader sees the old file or the new one, never half of one

    def _others(self) -> Iterator[tuple[dict[str, Any], bool]]:
        for path in sorted(self.directory.glob("*.json")):
            if path == self.path:
                continue
            data = _read(path)
            if data is not None and isinstance(data.get("numbers"), dict):
                yield data["numbers"], _alive(data.get("pid"))

    def render(self) -> bytes:
        return self.metrics.summed([*self._carried_on(), *self._others()]).render()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(WRITE_EVERY)
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:
                log.warning("writing this process's metrics to %s failed: %s", self.path, exc)
