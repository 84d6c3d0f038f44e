"""The gateway's shared state: settings, stores, the ledger, the model routes, and their lifecycle.

Everything a request handler needs lives on one `Gateway` object; nothing else is global.
The ASGI application (`server/app.py`) and the handlers (`server/handlers.py`) both build
on this module; it imports neither of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meshgate.accounts.service import AccountStore
from meshgate.accounts.worker_tokens import WorkerTokenStore
from meshgate.catalog.spec import BUCKETS, ModelSpec
from meshgate.config import Settings
from meshgate.protocol.errors import invalid_request, model_not_found
from meshgate.protocol.models import model_card
from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Ledger, WindowKey
from meshgate.quota.policy import QuotaPolicy
from meshgate.quota.redis_ledger import RedisLedger
from meshgate.server.admission import Admitter, today
from meshgate.server.auth import KeyAuthenticator
from meshgate.server.metrics import Metrics
from meshgate.server.metrics_share import SharedMetrics
from meshgate.server.worker_auth import WorkerAuthenticator, WorkerRateLimit
from meshgate.store.engine import sync_engine
from meshgate.workers.http_client import HttpClient
from meshgate.workers.membership import Membership
from meshgate.workers.pool import Replica, ReplicaSet
from meshgate.workers.prompt_count import PoolCounter, PromptCounter, counter_for
from meshgate.workers.registry import MemoryRegistry, WorkerRegistry, heartbeat_seconds
from meshgate.workers.registry_redis import RedisRegistry

log = logging.getLogger("meshgate.server")

LEDGER_NEEDS_SQLITE = (
    "MESHGATE_DATABASE_URL is not SQLite, so the quotas need the shared ledger: set MESHGATE_REDIS_URL=redis://… "
    "(the embedded ledger keeps its windows in one process, next to a SQLite database)"
)


@dataclass(slots=True)
class ModelRoute:
    spec: ModelSpec
    replicas: ReplicaSet
    prompt_counter: PromptCounter | None = None  # exact token counts, where an engine can count them
    engine_context: int | None = None  # the engine's own context length, where it said it is smaller

    @property
    def context_length(self) -> int:
        """The context admission checks against: the catalog's, or the engine's where that is smaller."""
        engine = self.engine_context
        return self.spec.context_length if engine is None else min(engine, self.spec.context_length)


class Gateway:
    """State shared by all requests, and the background work that keeps it fresh."""

    def __init__(self, settings: Settings, models: list[ModelSpec], *, ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.store = AccountStore(sync_engine(settings.database_url))
        self.auth = KeyAuthenticator(self.store)
        if ledger is None and settings.redis_url:
            # Several gateway processes: one exact ledger shared on Redis, its history in the database.
            ledger = RedisLedger(
                settings.redis_url,
                self.store.engine,
                prefix=settings.redis_prefix,
                reservation_ttl=settings.reservation_ttl,
            )
        if ledger is None:
            sqlite_path = settings.sqlite_path
            if sqlite_path is None:
                raise ValueError(LEDGER_NEEDS_SQLITE)
            ledger = EmbeddedLedger(sqlite_path)
        self.ledger: Ledger = ledger
        self.policy = QuotaPolicy()
        self.admitter = Admitter(self.ledger, self.policy)
        self.client = HttpClient(connect_timeout=settings.upstream_connect_timeout)
        self.routes: dict[str, ModelRoute] = {spec.id: self._route(spec) for spec in models}
        self.metrics = Metrics(models, settings.metrics_token)  # label children bound per model and bucket
        self.shared_metrics = SharedMetrics.from_env(self.metrics)  # serve --processes N: /metrics sums them all
        self.models_listing = orjson.dumps({"object": "list", "data": [model_card(s) for s in models]})
        # Workers that register themselves join the routes' pools (workers/membership.py).
        self.worker_tokens = WorkerTokenStore(self.store.engine)
        worker_rate = WorkerRateLimit.for_fleet(settings.max_workers_per_token, heartbeat_seconds(settings.worker_ttl))
        self.worker_auth = WorkerAuthenticator(self.worker_tokens, limit=worker_rate)
        self.workers = Membership(self._worker_registry(), {m: r.replicas for m, r in self.routes.items()})
        self._overrides_version: tuple[int, float] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    def _route(self, spec: ModelSpec) -> ModelRoute:
        replicas = ReplicaSet([Replica(u) for u in spec.upstreams])
        engine = spec.local.engine if spec.local is not None else None
        client, context = self.client, spec.context_length

        def make_counter(replica: Replica) -> PromptCounter | None:
            kind = engine
            if replica.source == "registered":  # a registered llama.cpp server counts as a local one does
                kind = "llama.cpp" if replica.engine == "llamacpp" else None
            return counter_for(client, replica, kind, catalog_context=context)

        counter = PoolCounter(replicas, make_counter)
        return ModelRoute(spec, replicas, counter)

    def _worker_registry(self) -> WorkerRegistry:
        """In Redis when there is one (every gateway process sees every worker), else in this process."""
        settings = self.settings
        if settings.redis_url:
            return RedisRegistry(settings.redis_url, prefix=settings.redis_prefix, ttl=settings.worker_ttl)
        return MemoryRegistry(settings.worker_ttl)

    def keep_task(self, task: asyncio.Task[None]) -> None:
        """A background task that lives until shutdown (and is cancelled then)."""
        self._background.append(task)

    def lookup(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise model_not_found(model)
        return route

    def route_for(self, model: str, kind: str) -> ModelRoute:
        """The model's route, if it is of the kind the endpoint serves (400 naming the right endpoint if not)."""
        route = self.lookup(model)
        if route.spec.kind != kind:
            endpoint = "/embeddings" if route.spec.kind == "embedding" else "/chat/completions"
            raise invalid_request(
                f"`{route.spec.id}` is a {route.spec.kind} model: use {endpoint}",
                param="model",
                code="wrong_model_kind",
            )
        return route

    # ------------------------------------------------------------ quotas left

    async def quota_row(self, account_id: int, spec: ModelSpec, bucket: str, day: str) -> dict[str, Any] | None:
        """Today's window of one model and bucket against its quota, as admission sees it; None: no quota."""
        limit = self.admitter.policy.limit(account_id, spec, bucket)
        if limit is None:
            return None
        window = await self.ledger.window(WindowKey(account_id, spec.id, bucket, day))
        return {
            "model": spec.id,
            "bucket": bucket,
            "used": window.used,
            "reserved": window.reserved,
            "limit": limit,
            "remaining": max(limit - window.used - window.reserved, 0),
        }

    async def usage_rows(self, account_id: int, models: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """`quota_row` of every model (of `models`, if given) and bucket the account has a quota on."""
        day, rows = today(), []
        for route in self.routes.values():
            if models is not None and route.spec.id not in models:
                continue
            for bucket in BUCKETS:
                row = await self.quota_row(account_id, route.spec, bucket, day)
                if row is not None:
                    rows.append(row)
        return rows

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        await self.refresh()
        for hook in self.on_startup:
            await hook()
        self._background.append(asyncio.create_task(self._refresh_loop()))
        with contextlib.suppress(Exception):  # Redis not there yet: the sync loop says so and retries
            await self.workers.sync()
        self._background.append(asyncio.create_task(self.workers.run()))
        if self.shared_metrics is not None:
            self._background.append(asyncio.create_task(self.shared_metrics.run()))

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.auth.refresh()  # write the last-use times
        if self.shared_metrics is not None:
            with contextlib.suppress(OSError):
                self.shared_metrics.write()  # the last numbers, for the process started in this one's place
        for hook in self.on_shutdown:
            await hook()
        await self.client.aclose()
        await self.ledger.close()
        await self.workers.registry.close()

    def render_metrics(self) -> bytes:
        """`GET /metrics`: this process's numbers, or every process's under `serve --processes N`."""
        if self.shared_metrics is not None:
            return self.shared_metrics.render()
        return self.metrics.render()

    async def refresh(self) -> None:
        """Pick up revocations and quota overrides written by the CLI or another gateway."""
        await self.auth.refresh()
        version = await asyncio.to_thread(self.store.overrides_version)
        if version != self._overrides_version:
            self.policy.replace_overrides(await asyncio.to_thread(self.store.quota_overrides))
            self._overrides_version = version

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.auth_refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing keys and quota overrides failed; retrying")
