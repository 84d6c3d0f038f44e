"""Settings from the environment (`MESHGATE_*`) with defaults for a laptop."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 8 * 1024 * 1024
    extra_fields: frozenset[str] = frozenset()  # request fields passed to engines beyond protocol/fields.py
    auth_refresh_seconds: float = 1.0  # how often revocations and quota overrides are picked up
    upstream_connect_timeout: float = 5.0
    upstream_response_timeout: float = 600.0  # a whole plain (non-streaming) answer, headers to last byte
    stream_idle_timeout: float = 120.0  # the longest silence between two events of a stream
    stream_max_seconds: float = 3600.0  # a whole stream, however lively
    max_upstream_answer_bytes: int = 64 * 1024 * 1024  # a plain answer read from an engine
    max_event_bytes: int = 1024 * 1024  # one SSE event from an engine
    max_head_bytes: int = 64 * 1024  # a request line and headers; larger get 431
    head_timeout: float = 10.0  # for a request head to arrive, from connect or its first byte
    body_timeout: float = 30.0  # for a request body to arrive, from the end of its head; then 408
    max_connections: int = 4096  # client connections served at once; idle ones make way for new ones
    redis_url: str | None = None  # set: the shared ledger on Redis (several gateway processes), else the embedded one
    reservation_ttl: float = 120.0  # the shared ledger: how long a reservation outlives its process
    log_format: str = "text"  # "json": one JSON object per log line (MESHGATE_LOG_FORMAT)
    metrics_token: str | None = None  # set: GET /metrics needs `Authorization: Bearer <token>`
    redis_prefix: str = "meshgate:"  # every Redis key of this deployment starts with it (several may share a Redis)
    worker_ttl: float = 6.0  # a registered worker's lease: it leaves the pools this long after its last heartbeat
    max_workers: int = 1024  # registered workers in all (every model, every token)
    max_workers_per_token: int = 64

    @property
    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :])
        return None


def load_settings(**overrides: object) -> Settings:
    env = os.environ
    home = Path(env.get("MESHGATE_HOME", Path.home() / ".meshgate")).expanduser()
    database_url = env.get("MESHGATE_DATABASE_URL") or f"sqlite:///{home / 'meshgate.db'}"
    values: dict[str, object] = {
        "home": home,
        "database_url": database_url,
        "host": env.get("MESHGATE_HOST", "127.0.0.1"),
        "port": int(env.get("MESHGATE_PORT", "8000")),
        "max_body_bytes": int(env.get("MESHGATE_MAX_BODY_BYTES", str(8 * 1024 * 1024))),
        "extra_fields": frozenset(f.strip() for f in env.get("MESHGATE_EXTRA_FIELDS", "").split(",") if f.strip()),
        "auth_refresh_seconds": float(env.get("MESHGATE_AUTH_REFRESH_SECONDS", "1.0")),
        "upstream_connect_timeout": float(env.get("MESHGATE_UPSTREAM_CONNECT_TIMEOUT", "5")),
        "upstream_response_timeout": float(env.get("MESHGATE_UPSTREAM_RESPONSE_TIMEOUT", "600")),
        "stream_idle_timeout": float(env.get("MESHGATE_STREAM_IDLE_TIMEOUT", "120")),
        "stream_max_seconds": float(env.get("MESHGATE_STREAM_MAX_SECONDS", "3600")),
        "max_upstream_answer_bytes": int(env.get("MESHGATE_MAX_UPSTREAM_ANSWER_BYTES", str(64 * 1024 * 1024))),
        "max_event_bytes": int(env.get("MESHGATE_MAX_EVENT_BYTES", str(1024 * 1024))),
        "max_head_bytes": int(env.get("MESHGATE_MAX_HEAD_BYTES", str(64 * 1024))),
        "head_timeout": float(env.get("MESHGATE_HEAD_TIMEOUT", "10")),
        "body_timeout": float(env.get("MESHGATE_BODY_TIMEOUT", "30")),
        "max_connections": int(env.get("MESHGATE_MAX_CONNECTIONS", "4096")),
        "redis_url": env.get("MESHGATE_REDIS_URL") or None,
        "reservation_ttl": float(env.get("MESHGATE_RESERVATION_TTL", "120")),
        "log_format": "json" if env.get("MESHGATE_LOG_FORMAT", "").strip().lower() == "json" else "text",
        "metrics_token": env.get("MESHGATE_METRICS_TOKEN") or None,
        "redis_prefix": env.get("MESHGATE_REDIS_PREFIX") or "meshgate:",
        "worker_ttl": float(env.get("MESHGATE_WORKER_TTL", "6")),
        "max_workers": int(env.get("MESHGATE_MAX_WORKERS", "1024")),
        "max_workers_per_token": int(env.get("MESHGATE_MAX_WORKERS_PER_TOKEN", "64")),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["database_url"] = normalize_database_url(str(values["database_url"]))
    return Settings(**values)  # type: ignore[arg-type]


# PostgreSQL URLs as operators write them (plain, Heroku's `postgres://`, SQLAlchemy's async or psycopg2
# spellings), all served by the one driver we install: psycopg 3, synchronous (store/engine.py).
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://", "postgresql+asyncpg://")


def normalize_database_url(url: str) -> str:
    """`postgresql://…` and its other spellings as `postgresql+psycopg://…`; anything else unchanged."""
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme) :]
            # asyncpg spells libpq's sslmode as `ssl`; psycopg would pass `ssl` on to libpq, which refuses it.
            return re.sub(r"([?&])ssl=", r"\1sslmode=", url)
    return url
