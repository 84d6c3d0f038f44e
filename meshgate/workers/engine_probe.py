"""What `meshgate worker` asks its engine: is it healthy, which model does it serve, how loaded is it.

Health, per engine: vLLM, SGLang, llama.cpp and TGI answer `GET /health` with 200 when ready
(llama.cpp 503 while loading), Ollama `GET /api/tags`; anything else ("openai", or "auto") is
healthy when `GET /v1/models` answers. Load comes from the engine's Prometheus `/metrics`
where it has one: requests running and waiting and the KV cache in use, summed over the series
(vLLM has one per engine core with data parallelism). An engine without `/metrics` (a 404) is
not asked again for a minute; its load is then unknown and the gateway counts its own requests.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from meshgate.workers.registry import Load

log = logging.getLogger("meshgate.worker")

# Per engine: the gauges for (running, waiting, KV cache in use), first name found wins.
METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "vllm": (
        ("vllm:num_requests_running",),
        ("vllm:num_requests_waiting",),
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    "sglang": (("sglang:num_running_reqs",), ("sglang:num_queue_reqs",), ("sglang:token_usage",)),
    "llamacpp": (
        ("llamacpp:requests_processing",),
        ("llamacpp:requests_deferred",),
        ("llamacpp:kv_cache_usage_ratio",),
    ),
    "tgi": (("tgi_batch_current_size",), ("tgi_queue_size",), ()),
}
HEALTH_PATHS = {"vllm": "/health", "sglang": "/health", "llamacpp": "/health", "tgi": "/health", "ollama": "/api/tags"}
MAX_METRICS_BYTES = 4 << 20
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)
_METRICS_RETRY = 60.0


@dataclass(frozen=True, slots=True)
class Engine:
    root: str  # the engine's server root (its base URL without /v1)
    base: str  # its OpenAI base URL
    kind: str  # one of registration.ENGINES, or "auto"


def engine_for(base_url: str, kind: str) -> Engine:
    base = base_url.rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    return Engine(root, base, kind)


def parse_metrics(text: str, kind: str) -> Load:
    """Load from Prometheus text: the engine's gauges, or every known engine's if the kind is not known."""
    samples: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        try:
            samples[name] = samples.get(name, 0.0) + float(value)
        except ValueError:
            continue
    tables = [METRICS[kind]] if kind in METRICS else list(METRICS.values())
    for running_names, waiting_names, kv_names in tables:
        running = _first(samples, running_names)
        waiting = _first(samples, waiting_names)
        if running is None and waiting is None:
            continue
        kv = _first(samples, kv_names)
        if kv is not None:
            kv = kv / max(_series(text, kv_names), 1)  # a fraction per engine core: their mean
            kv = kv / 100 if kv > 1 else kv  # some engines say percent
        return Load(
            running=None if running is None else int(running),
            waiting=None if waiting is None else int(waiting),
            kv_cache=None if kv is None else min(max(kv, 0.0), 1.0),
        )
    return Load()


def _first(samples: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in samples:
            return samples[name]
    return None


def _series(text: str, names: tuple[str, ...]) -> int:
    for name in names:
        count = sum(1 for found, _ in _SAMPLE.findall(text) if found == name)
        if count:
            return count
    return 1


class EngineProbe:
    def __init__(self, engine: Engine, client: httpx.AsyncClient, timeout: float = 3.0) -> None:
        self.engine = engine
        self._client = client
        self._timeout = timeout
        self._metrics_after = 0.0

    async def healthy(self) -> bool:
        path = HEALTH_PATHS.get(self.engine.kind)
        url = self.engine.root + path if path else self.engine.base + "/models"
        try:
            response = await self._client.get(url, timeout=self._timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def served_models(self) -> list[str] | None:
        """The model names `GET /v1/models` lists, or None if it does not answer that."""
        try:
            response = await self._client.get(self.engine.base + "/models", timeout=self._timeout)
            data: Any = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return None
        return [m["id"] for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def load(self) -> Load:
        if self.engine.kind in ("ollama", "openai") or time.monotonic() < self._metrics_after:
            return Load()
        try:
            response = await self._client.get(self.engine.root + "/metrics", timeout=self._timeout)
        except httpx.HTTPError:
            return Load()
        if response.status_code != 200 or len(response.content) > MAX_METRICS_BYTES:
            self._metrics_after = time.monotonic() + _METRICS_RETRY
            log.info("%s/metrics answers %d: the engine's load is not reported", self.engine.root, response.status_code)
            return Load()
        return parse_metrics(response.text, self.engine.kind)
