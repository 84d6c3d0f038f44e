"""Registered workers: engines that joined through `POST /internal/workers/register`, kept alive by heartbeats.

A registration is a lease: it lives `ttl` seconds after its last heartbeat, then it is gone. Two
stores keep them. `MemoryRegistry` is one process's dict (the single-process gateway);
`RedisRegistry` (`registry_redis.py`) keeps them in Redis so every gateway process and machine
sees the same workers (keys with a TTL, refreshed by each heartbeat). Each gateway process reads
the live registrations about once a second (`membership.py`) and keeps its pools in step.

A registration's id is derived from its model and URL, so an engine that registers again (its
worker restarted, or the gateway forgot it) takes its own place back instead of adding a copy.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import orjson


def heartbeat_seconds(ttl: float) -> float:
    """A third of the lease: two heartbeats may be lost before a healthy worker drops out."""
    return round(ttl / 3, 3)


@dataclass(frozen=True, slots=True)
class Load:
    """What a worker saw of its engine at its last heartbeat; None where the engine does not say."""

    running: int | None = None  # requests the engine is working on
    waiting: int | None = None  # requests queued in the engine (vLLM num_requests_waiting)
    kv_cache: float | None = None  # fraction of the KV cache in use, 0..1

    @classmethod
    def from_dict(cls, data: Any) -> Load:
        if not isinstance(data, dict):
            return cls()
        return cls(_int(data.get("running")), _int(data.get("waiting")), _float(data.get("kv_cache")))


@dataclass(frozen=True, slots=True)
class Registration:
    id: str
    token_id: str
    model: str  # the catalog id it serves replicas of
    url: str  # the engine's OpenAI base URL, http://host:port/v1
    served_model: str  # the name the engine knows the model by
    engine: str | None = None  # vllm, sglang, llamacpp, ollama, tgi, openai
    max_concurrency: int | None = None
    load: Load = field(default_factory=Load)
    registered_at: float = 0.0  # epoch seconds
    heartbeat_at: float = 0.0  # epoch seconds of the last heartbeat (or the registration)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["token"] = data.pop("token_id")
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Registration | None:
        """A stored registration, or None if it is not one (never an exception: another version wrote it)."""
        try:
            data = orjson.loads(raw)
            return cls(
                id=str(data["id"]),
                token_id=str(data["token"]),
                model=str(data["model"]),
                url=str(data["url"]),
                served_model=str(data["served_model"]),
                engine=data.get("engine"),
                max_concurrency=_int(data.get("max_concurrency")),
                load=Load.from_dict(data.get("load")),
                registered_at=float(data.get("registered_at") or 0.0),
                heartbeat_at=float(data.get("heartbeat_at") or 0.0),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def registration_id(model: str, url: str) -> str:
    """The same engine for the same model always has the same id."""
    return "wk-" + hashlib.sha256(f"{model}\n{url}".encode()).hexdigest()[:20]


class RegistryFull(Exception):
    """No room for another registration: too many in all, or for this token. The message says which."""


class WorkerRegistry(Protocol):
    ttl: float

    async def register(self, registration: Registration, max_total: int, max_per_token: int) -> None:
        """Add or replace a registration (raises RegistryFull)."""
        ...

    async def heartbeat(self, worker_id: str, token_id: str, load: Load) -> bool:
        """Renew a registration of this token; False if there is none (expired or never made)."""
        ...

    async def remove(self, worker_id: str, token_id: str) -> bool: ...

    async def live(self) -> list[Registration]:
        """Every registration whose lease has not run out."""
        ...

    async def close(self) -> None: ...


class MemoryRegistry:
    """The registrations of a single gateway process: forgotten when it restarts (workers register again)."""

    def __init__(self, ttl: float, clock: Any = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, Registration] = {}

    def _sweep(self) -> float:
        now = self._clock()
        for worker_id in [i for i, r in self._entries.items() if r.heartbeat_at + self.ttl <= now]:
            del self._entries[worker_id]
        return float(now)

    async def register(self, registration: Registration, max_total: int, max_per_token: int) -> None:
        now = self._sweep()
        entries = self._entries
        if registration.id not in entries:
            if len(entries) >= max_total:
                raise RegistryFull(f"the gateway already has {max_total} registered workers")
            if sum(1 for r in entries.values() if r.token_id == registration.token_id) >= max_per_token:
                raise RegistryFull(f"this worker token already has {max_per_token} registered workers")
        entries[registration.id] = replace(registration, registered_at=now, heartbeat_at=now)

    async def heartbeat(self, worker_id: str, token_id: str, load: Load) -> bool:
        now = self._sweep()
        current = self._entries.get(worker_id)
        if current is None or current.token_id != token_id:
            return False
        self._entries[worker_id] = replace(current, load=load, heartbeat_at=now)
        return True

    async def remove(self, worker_id: str, token_id: str) -> bool:
        self._sweep()
        current = self._entries.get(worker_id)
        if current is None or current.token_id != token_id:
            return False
        del self._entries[worker_id]
        return True

    async def live(self) -> list[Registration]:
        self._sweep()
        return list(self._entries.values())

    async def close(self) -> None:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
