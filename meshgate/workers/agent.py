"""`meshgate worker`: runs beside an engine, keeps it registered with a gateway while it is healthy.

The loop, every `interval` seconds (the gateway says how often; ~2 s):

- the engine's health is checked; while it fails, no heartbeat is sent, so the gateway takes the
  engine out of rotation when the registration's lease runs out (a few seconds), and the loop
  keeps checking;
- healthy and not registered: register (model, URL, max concurrency, engine kind, load);
- healthy and registered: a heartbeat with the load. A 404 means the gateway no longer knows the
  registration (it restarted, or the lease ran out while the engine was down): register again.

A gateway that cannot be reached is retried at the same pace. SIGTERM or SIGINT deregisters
(`DELETE`) and exits; a refused token (401/403) or a registration the gateway calls invalid (400)
exits with status 2, since retrying would not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from meshgate.workers.engine_probe import EngineProbe, engine_for
from meshgate.workers.registry import Load

log = logging.getLogger("meshgate.worker")

DEFAULT_INTERVAL = 2.0
GATEWAY_TIMEOUT = 5.0


class WorkerRefused(Exception):
    """The gateway refused the token or the registration: retrying would not help."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    gateway: str  # the gateway's URL (its /api/v1 suffix, if given, is ignored)
    token: str
    model: str
    upstream: str  # the engine's OpenAI base URL as the gateway should reach it
    max_concurrency: int | None = None
    engine: str = "auto"
    served_model: str | None = None
    interval: float | None = None  # None: as the gateway says


def gateway_root(url: str) -> str:
    parts = urlsplit(url.rstrip("/"))
    path = parts.path
    for suffix in ("/api/v1", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return f"{parts.scheme}://{parts.netloc}{path}"


class WorkerAgent:
    def __init__(self, config: AgentConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client or httpx.AsyncClient()
        self._own_client = client is None
        self._probe = EngineProbe(engine_for(config.upstream, config.engine), self._client)
        self._root = gateway_root(config.gateway)
        self._headers = {"Authorization": f"Bearer {config.token}"}
        self.worker_id: str | None = None
        self.interval = config.interval or DEFAULT_INTERVAL
        self._served: str | None = config.served_model
        self._engine_up: bool | None = None
        self._gateway_up: bool | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until `stop()`: keep the engine registered while it is healthy; then deregister."""
        try:
            while not self._stop.is_set():
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
        finally:
            await self.leave()
            if self._own_client:
                await self._client.aclose()

    async def step(self) -> None:
        """One round: health, then register or heartbeat."""
        healthy = await self._probe.healthy()
        if healthy != self._engine_up:
            log.info(
                "engine at %s is %s",
                self.config.upstream,
                "healthy" if healthy else "not healthy: heartbeats paused, the gateway drops it shortly",
            )
            self._engine_up = healthy
        if not healthy:
            return
        load = await self._probe.load()
        try:
            if self.worker_id is None:
                await self._register(load)
            elif not await self._heartbeat(load):
                log.info("the gateway no longer knows this worker; registering again")
                self.worker_id = None
                await self._register(load)
        except httpx.HTTPError as exc:
            if self._gateway_up is not False:
                log.warning("gateway %s unreachable (%s); retrying every %.0f s", self._root, exc, self.interval)
            self._gateway_up = False
            return
        if self._gateway_up is False:
            log.info("gateway %s reachable again", self._root)
        self._gateway_up = True

    async def _served_model(self) -> str:
        if self._served is None:
            names = await self._probe.served_models()
            model = self.config.model
            if names and model not in names and len(names) == 1:
                self._served = names[0]  # vLLM serves the model under its path unless --served-model-name
                log.info("the engine serves %s as %r", model, names[0])
            else:
                if names and model not in names:
                    log.warning("the engine serves %s, not %s: pass --served-model NAME", ", ".join(names), model)
                self._served = model
        return self._served

    async def _register(self, load: Load) -> None:
        body: dict[str, Any] = {
            "model": self.config.model,
            "upstream": self.config.upstream,
            "served_model": await self._served_model(),
            "load": asdict(load),
        }
        if self.config.max_concurrency is not None:
            body["max_concurrency"] = self.config.max_concurrency
        if self.config.engine != "auto":
            body["engine"] = self.config.engine
        response = await self._client.post(
            self._root + "/internal/workers/register", json=body, headers=self._headers, timeout=GATEWAY_TIMEOUT
        )
        if response.status_code == 429 or response.status_code >= 500:  # no room, or the gateway's trouble: retry
            log.warning("the gateway did not register this worker (%d): %s", response.status_code, _message(response))
            return
        if response.status_code != 200:
            raise WorkerRefused(f"the gateway refused the registration ({response.status_code}): {_message(response)}")
        answer = response.json()
        self.worker_id = str(answer["id"])
        if self.config.interval is None and isinstance(answer.get("heartbeat_seconds"), int | float):
            self.interval = max(float(answer["heartbeat_seconds"]), 0.2)
        log.info("registered %s at %s as worker %s", self.config.model, self.config.upstream, self.worker_id)

    async def _heartbeat(self, load: Load) -> bool:
        response = await self._client.post(
            self._root + "/internal/workers/heartbeat",
            json={"id": self.worker_id, "load": asdict(load)},
            headers=self._headers,
            timeout=GATEWAY_TIMEOUT,
        )
        if response.status_code == 404:
            return False
        if response.status_code in (400, 401, 403):
            raise WorkerRefused(f"the gateway refused the heartbeat ({response.status_code}): {_message(response)}")
        return True  # a 5xx is the gateway's trouble: the lease decides, the next round retries

    async def leave(self) -> None:
        """Deregister, if registered: the gateway stops routing here at once (not after the lease)."""
        worker_id, self.worker_id = self.worker_id, None
        if worker_id is None:
            return
        try:
            await self._client.delete(
                f"{self._root}/internal/workers/{worker_id}", headers=self._headers, timeout=GATEWAY_TIMEOUT
            )
            log.info("deregistered worker %s", worker_id)
        except httpx.HTTPError as exc:
            log.warning("could not deregister (%s); the gateway drops the worker when its lease runs out", exc)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def run_agent(config: AgentConfig) -> int:
    """The CLI's entry: run until SIGTERM/SIGINT (0) or a refusal (2)."""
    agent = WorkerAgent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    except WorkerRefused as exc:
        log.error("%s", exc)
        return 2
    return 0
