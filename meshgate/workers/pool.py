"""Replicas of a model and the choice among them: least outstanding requests, healthy first.

Each replica has a small circuit breaker: a failed connect takes it out of rotation for
a cool-down that doubles with each further failure (up to 30 s); after the cool-down one
request tries it again. Local workers also report their health directly (`set_healthy`).

A model's replicas are its catalog upstreams and the workers registered for it
(`membership.py` adds and removes those as they join and leave). A registered worker
reports its engine's load: what is queued there (`waiting`, requests of every gateway
process) counts on top of this process's own requests in flight, and a worker at its
`max_concurrency` or with a full KV cache gets requests only when every replica is so.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshgate.catalog.spec import UpstreamSpec
from meshgate.workers.http_client import (
    HttpClient,
    Origin,
    UpstreamConnectError,
    UpstreamResponse,
)

_BASE_COOLDOWN = 0.5
_MAX_COOLDOWN = 30.0
KV_CACHE_FULL = 0.95  # beyond this vLLM starts preempting requests: send elsewhere if there is room


@dataclass(eq=False, slots=True)
class Replica:
    spec: UpstreamSpec
    origin: Origin = field(init=False)
    headers: list[tuple[bytes, bytes]] = field(init=False)
    in_flight: int = 0
    healthy: bool = True  # as reported by a supervisor (local workers) or a registry
    failures: int = 0
    down_until: float = 0.0
    # Registered workers (membership.py); catalog upstreams keep the defaults.
    source: str = "catalog"  # or "registered", "local"
    worker_id: str | None = None
    engine: str | None = None  # the engine kind a registered worker said it runs
    max_concurrency: int | None = None
    queued: int = 0  # requests waiting in the engine at its last report (every gateway's)
    kv_cache: float | None = None
    running: int | None = None  # the engine's requests in flight at its last report (every gateway's)
    heartbeat_at: float | None = None  # epoch seconds of its last heartbeat

    def __post_init__(self) -> None:
        self.origin = Origin.parse(self.spec.url)
        self.headers = [(b"Content-Type", b"application/json")]
        if self.spec.api_key:
            self.headers.append((b"Authorization", b"Bearer " + self.spec.api_key.encode()))

    def available(self, now: float) -> bool:
        return self.healthy and self.down_until <= now

    def connect_failed(self, now: float) -> None:
        self.failures += 1
        self.down_until = now + min(_BASE_COOLDOWN * 2 ** (self.failures - 1), _MAX_COOLDOWN)

    def succeeded(self) -> None:
        if self.failures:
            self.failures = 0
            self.down_until = 0.0

    def full(self) -> bool:
        cap = self.max_concurrency
        if cap is not None and self.in_flight >= cap:
            return True
        kv = self.kv_cache
        return kv is not None and kv >= KV_CACHE_FULL


class NoReplicaAvailable(Exception):
    """Every replica of the model is down or refused the connection."""


class ReplicaSet:
    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self._turn = itertools.count()
        self._reported = False  # a registered worker has joined: its load reports count in the choice

    def pick(self, exclude: set[Replica] | tuple[()] = ()) -> Replica | None:
        now = time.monotonic()
        replicas = self.replicas
        if len(replicas) == 1:
            only = replicas[0]
            return only if only.available(now) and only not in exclude else None
        candidates = [r for r in replicas if r.available(now) and r not in exclude]
        if not candidates:
            return None
        if not self._reported:  # catalog upstreams only: least outstanding, as ever
            least = min(r.in_flight for r in candidates)
            tied = [r for r in candidates if r.in_flight == least]
            return tied[next(self._turn) % len(tied)]
        if len(candidates) > 1:
            roomy = [r for r in candidates if not r.full()]
            candidates = roomy or candidates
        least = min(r.in_flight + r.queued for r in candidates)
        tied = [r for r in candidates if r.in_flight + r.queued == least]
        return tied[next(self._turn) % len(tied)]

    def add(self, replica: Replica) -> None:
        """A replica joins (a registered worker): a new list, so a `pick` in progress is not disturbed."""
        self.replicas = [*self.replicas, replica]
        self._reported = True

    def remove(self, replica: Replica) -> None:
        """A replica leaves; its requests in flight finish (or fail) on their own."""
        self.replicas = [r for r in self.replicas if r is not replica]

    async def send(
        self, client: HttpClient, path: bytes, encode: Callable[[Replica], bytes], timeout: float | None = None
    ) -> tuple[Replica, UpstreamResponse]:
        """Send to the least loaded healthy replica; a failed connect moves on to the next one.

        `encode` makes the request body for a replica (replicas may know the model by other names);
        `timeout` bounds the wait for the response headers.

        The caller owns `replica.in_flight` (already incremented here) and must call `done()`.
        """
        tried: set[Replica] = set()
        while (replica := self.pick(tried)) is not None:
            tried.add(replica)
            replica.in_flight += 1
            try:
                response = await client.request(
                    b"POST", replica.origin, path, encode(replica), replica.headers, timeout
                )
            except UpstreamConnectError:
                replica.in_flight -= 1
                replica.connect_failed(time.monotonic())
                continue
            except BaseException:
                replica.in_flight -= 1
                raise
            replica.succeeded()
            return replica, response
        raise NoReplicaAvailable()

    @staticmethod
    def done(replica: Replica) -> None:
        replica.in_flight -= 1
