"""Keeps each model's pool in step with the registered workers: they join, report load, and leave.

Every gateway process reads the registry's live registrations about once a second (`sync`) and
applies them to its `ReplicaSet`s: a new registration becomes a replica, a known one updates its
reported load in place (its in-flight count and circuit breaker carry on), and one that is gone
(deregistered, or its lease ran out because its heartbeats stopped) leaves the rotation. A worker
that misses its heartbeats is therefore out within `ttl` + one sync; it is back at the first sync
after it heartbeats (or registers) again. If the registry cannot be read, the last view is kept
but ages: a registration whose last heartbeat is older than its `ttl` is dropped all the same.

A registration for a model the catalog does not have is ignored (the registration API refuses
them, but another gateway may run another catalog), as is one for a URL the catalog already routes
that model to: it is the same engine, already in the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from meshgate.catalog.spec import UpstreamSpec
from meshgate.workers.pool import Replica, ReplicaSet
from meshgate.workers.registry import Registration, WorkerRegistry

log = logging.getLogger("meshgate.workers")

SYNC_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica as `meshgate workers list` shows it."""

    model: str
    source: str
    url: str
    served_model: str
    worker_id: str | None
    engine: str | None
    healthy: bool  # in rotation now: reported healthy and not cooling down after failed connects
    in_flight: int  # this gateway process's requests on it
    running: int | None
    waiting: int | None
    kv_cache: float | None
    max_concurrency: int | None
    last_heartbeat: float | None


class Membership:
    def __init__(
        self,
        registry: WorkerRegistry,
        pools: Mapping[str, ReplicaSet],
        *,
        sync_seconds: float = SYNC_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._pools = pools
        self._sync_seconds = sync_seconds
        self._clock = clock
        self._registered: dict[str, dict[str, Replica]] = {model: {} for model in pools}
        self._catalog_urls = {
            model: {_canonical(r.spec.url) for r in pool.replicas if r.source == "catalog"}
            for model, pool in pools.items()
        }
        self._last: list[Registration] = []
        self._failing = False

    async def sync(self) -> None:
        """Read the registry and apply it; on failure keep (and age) the last view."""
        try:
            self._last = await self.registry.live()
        except Exception as exc:
            if not self._failing:
                log.warning("reading the worker registry failed (%r); keeping the last view until it ages", exc)
            self._failing = True
        else:
            if self._failing:
                log.info("the worker registry answers again")
            self._failing = False
        self.apply(self._last)

    def apply(self, registrations: list[Registration]) -> None:
        now = self._clock()
        wanted: dict[str, dict[str, Registration]] = {model: {} for model in self._pools}
        for registration in registrations:
            of_model = wanted.get(registration.model)
            if of_model is None or registration.heartbeat_at + self.registry.ttl <= now:
                continue
            if _canonical(registration.url) in self._catalog_urls[registration.model]:
                continue
            of_model[registration.id] = registration
        for model, pool in self._pools.items():
            current = self._registered[model]
            for worker_id in [i for i in current if i not in wanted[model]]:
                gone = current.pop(worker_id)
                pool.remove(gone)
                log.info("worker %s (%s) left %s", worker_id, gone.spec.url, model)
            for worker_id, registration in wanted[model].items():
                replica: Replica | None = current.get(worker_id)
                if replica is not None and (replica.spec.url, replica.spec.model) != (
                    registration.url,
                    registration.served_model,
                ):
                    pool.remove(replica)  # the served name changed: a fresh replica (and prompt counter)
                    replica = None
                if replica is None:
                    replica = Replica(UpstreamSpec(registration.url, registration.served_model))
                    replica.source, replica.worker_id = "registered", worker_id
                    current[worker_id] = replica
                    pool.add(replica)
                    log.info("worker %s (%s) joined %s", worker_id, registration.url, model)
                _report(replica, registration)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._sync_seconds)
            try:
                await self.sync()
            except Exception:  # never let the loop die: the pools would freeze
                log.exception("applying the worker registry failed; retrying")

    def views(self) -> list[ReplicaView]:
        now = time.monotonic()
        rows = []
        for model, pool in self._pools.items():
            for r in pool.replicas:
                rows.append(
                    ReplicaView(
                        model,
                        r.source,
                        r.spec.url,
                        r.spec.model,
                        r.worker_id,
                        r.engine,
                        r.available(now),
                        r.in_flight,
                        r.running,
                        r.queued if r.source == "registered" else None,
                        r.kv_cache,
                        r.max_concurrency,
                        r.heartbeat_at,
                    )
                )
        return rows


def _report(replica: Replica, registration: Registration) -> None:
    load = registration.load
    replica.engine = registration.engine
    replica.max_concurrency = registration.max_concurrency
    replica.running = load.running
    replica.queued = load.waiting or 0
    replica.kv_cache = load.kv_cache
    replica.heartbeat_at = registration.heartbeat_at


def _canonical(url: str) -> str:
    return url.rstrip("/").lower()
