"""What a worker may send when it registers or heartbeats, checked field by field (400 naming the field).

Shared by the gateway (which refuses what does not fit) and `meshgate worker` (which checks its
own flags the same way before it sends them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from meshgate.protocol.errors import ApiError, invalid_request
from meshgate.workers.registry import Load

ENGINES = ("vllm", "sglang", "llamacpp", "ollama", "tgi", "openai")
MAX_BODY_BYTES = 16 * 1024  # a registration or heartbeat is a few hundred bytes
MAX_URL = 2048
MAX_NAME = 256
MAX_CONCURRENCY = 1_000_000
MAX_COUNT = 10_000_000  # requests running or waiting in one engine: far beyond any
MAX_ID = 64

_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]")
_REGISTER_FIELDS = frozenset({"model", "upstream", "served_model", "max_concurrency", "engine", "load"})
_HEARTBEAT_FIELDS = frozenset({"id", "load"})
_LOAD_FIELDS = frozenset({"running", "waiting", "kv_cache"})


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    model: str
    upstream: str
    served_model: str
    max_concurrency: int | None
    engine: str | None
    load: Load


def normalize_upstream(url: Any, param: str = "upstream") -> str:
    """An engine's OpenAI base URL as the gateway stores it: http://host:port/path, "/v1" if no path given."""
    if not isinstance(url, str) or not url:
        raise invalid_request(f"`{param}` must be the engine's URL, e.g. http://10.0.0.5:8000/v1", param=param)
    if len(url) > MAX_URL:
        raise invalid_request(f"`{param}` is longer than {MAX_URL} characters", param=param)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise invalid_request(f"`{param}` is not a valid URL: {url!r}", param=param) from None
    if parts.scheme == "https":
        raise invalid_request(
            f"`{param}` is https: the gateway speaks plain HTTP to engines (keep them on a private network)",
            param=param,
        )
    if parts.scheme != "http":
        raise invalid_request(f"`{param}` must start with http://, got {url!r}", param=param)
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if "@" in parts.netloc or not _HOST.fullmatch(host):
        raise invalid_request(f"`{param}` must name a host (no user or password): {url!r}", param=param)
    if port is not None and not 0 < port < 65536:
        raise invalid_request(f"`{param}` has an invalid port: {url!r}", param=param)
    if parts.query or parts.fragment:
        raise invalid_request(f"`{param}` must not have a query or fragment: {url!r}", param=param)
    path = parts.path.rstrip("/") or "/v1"
    return f"http://{host}{f':{port}' if port is not None else ''}{path}"


def parse_register(body: Any) -> RegisterRequest:
    data = _object(body, _REGISTER_FIELDS, "the registration")
    model = _name(data.get("model"), "model", required=True)
    served = _name(data.get("served_model"), "served_model", required=False)
    engine = data.get("engine")
    if engine is not None and engine not in ENGINES:
        raise invalid_request(f"`engine` must be one of {', '.join(ENGINES)}", param="engine")
    return RegisterRequest(
        model=model,
        upstream=normalize_upstream(data.get("upstream")),
        served_model=served or model,
        max_concurrency=_count(data.get("max_concurrency"), "max_concurrency", 1, MAX_CONCURRENCY),
        engine=engine,
        load=parse_load(data.get("load")),
    )


def parse_heartbeat(body: Any) -> tuple[str, Load]:
    data = _object(body, _HEARTBEAT_FIELDS, "the heartbeat")
    return worker_id(data.get("id")), parse_load(data.get("load"))


def worker_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID or not value.isascii():
        raise invalid_request("`id` must be the id the registration answered with", param="id")
    return value


def parse_load(value: Any) -> Load:
    if value is None:
        return Load()
    data = _object(value, _LOAD_FIELDS, "`load`", prefix="load.")
    kv = data.get("kv_cache")
    if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int | float) or not 0 <= kv <= 1):
        raise invalid_request("`load.kv_cache` must be a fraction between 0 and 1", param="load.kv_cache")
    return Load(
        running=_count(data.get("running"), "load.running", 0, MAX_COUNT),
        waiting=_count(data.get("waiting"), "load.waiting", 0, MAX_COUNT),
        kv_cache=None if kv is None else float(kv),
    )


def _object(value: Any, allowed: frozenset[str], what: str, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_request(f"{what} must be a JSON object", param=prefix.rstrip(".") or None)
    unknown = sorted(set(value) - allowed)
    if unknown:
        name = prefix + str(unknown[0])
        raise invalid_request(f"unknown field `{name}` in {what}", param=name)
    return value


def _name(value: Any, param: str, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise invalid_request(f"`{param}` must be a model name of 1 to {MAX_NAME} characters", param=param)
    return value


def _count(value: Any, param: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_request(f"`{param}` must be a whole number from {low} to {high}", param=param)
    return value


def forbidden_model(model: str) -> ApiError:
    return ApiError(
        403, f"this worker token may not register replicas of `{model}`", code="model_not_allowed", param="model"
    )
