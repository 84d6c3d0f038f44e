"""The `meshgate worker` loop against a scripted engine and gateway (httpx.MockTransport): what it sends when."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from meshgate.workers.agent import AgentConfig, WorkerAgent, WorkerRefused, gateway_root

ENGINE = "http://10.0.0.5:8000"


class Script:
    def __init__(self) -> None:
        self.healthy = True
        self.metrics: int | None = 200
        self.register_status = 200
        self.heartbeat_status = 200
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        path = request.url.path
        if request.url.host == "10.0.0.5":
            if path == "/health":
                return httpx.Response(200 if self.healthy else 503)
            if path == "/metrics":
                text = 'vllm:num_requests_running{model_name="x"} 3\nvllm:num_requests_waiting{model_name="x"} 1\n'
                return httpx.Response(self.metrics or 404, text=text)
            if path == "/v1/models":
                return httpx.Response(200, json={"data": [{"id": "/models/llama"}]})
        if path == "/internal/workers/register":
            status = self.register_status
            answer = {"id": "wk-1", "heartbeat_seconds": 1.5} if status == 200 else {"error": {"message": "no"}}
            return httpx.Response(status, json=answer)
        if path == "/internal/workers/heartbeat":
            return httpx.Response(self.heartbeat_status, json={"error": {"message": "gone"}})
        if request.method == "DELETE":
            return httpx.Response(200, json={"deleted": True})
        return httpx.Response(404)

    def gateway_calls(self) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[1].startswith("/internal/")]


def agent(script: Script, **kwargs: Any) -> WorkerAgent:
    config = AgentConfig("http://gw:8000/api/v1", "mgw-x", "meta/llama", ENGINE + "/v1", engine="vllm", **kwargs)
    return WorkerAgent(config, httpx.AsyncClient(transport=httpx.MockTransport(script)))


async def test_registers_then_heartbeats_with_the_engine_load() -> None:
    script = Script()
    worker = agent(script, max_concurrency=8)
    await worker.step()
    await worker.step()
    register, heartbeat = script.gateway_calls()
    assert register[1] == "/internal/workers/register"
    assert register[2] == {
        "model": "meta/llama",
        "upstream": ENGINE + "/v1",
        "served_model": "/models/llama",  # what the engine's /v1/models calls it
        "load": {"running": 3, "waiting": 1, "kv_cache": None},
        "max_concurrency": 8,
        "engine": "vllm",
    }
    assert heartbeat[2] == {"id": "wk-1", "load": {"running": 3, "waiting": 1, "kv_cache": None}}
    assert worker.interval == 1.5  # as the gateway said


async def test_no_heartbeat_while_the_engine_is_unhealthy_and_registering_again_after_a_404() -> None:
    script = Script()
    worker = agent(script)
    await worker.step()
    script.healthy = False
    await worker.step()
    await worker.step()
    assert len(script.gateway_calls()) == 1  # only the registration
    script.healthy, script.heartbeat_status = True, 404  # the gateway forgot it
    await worker.step()
    assert [c[1] for c in script.gateway_calls()] == [
        "/internal/workers/register",
        "/internal/workers/heartbeat",
        "/internal/workers/register",
    ]


async def test_gateway_trouble_is_retried_and_refusals_are_final() -> None:
    script = Script()
    script.register_status = 503
    worker = agent(script)
    await worker.step()
    assert worker.worker_id is None
    script.register_status = 200
    await worker.step()
    assert worker.worker_id == "wk-1"
    script.heartbeat_status = 401
    with pytest.raises(WorkerRefused):
        await worker.step()
    config = AgentConfig("http://gw:8000", "mgw-x", "meta/llama", ENGINE + "/v1")
    refused = WorkerAgent(config, httpx.AsyncClient(transport=httpx.MockTransport(_always(400))))
    with pytest.raises(WorkerRefused, match="400"):
        await refused.step()


async def test_stop_deregisters() -> None:
    script = Script()
    worker = agent(script, interval=0.05)
    worker.stop()
    await worker.run()  # stopped before the first round: nothing registered, nothing to delete
    assert script.gateway_calls() == []
    script = Script()
    worker = agent(script, interval=0.05)
    await worker.step()
    worker.stop()
    await worker.run()
    assert script.gateway_calls()[-1][:2] == ("DELETE", "/internal/workers/wk-1")


def test_gateway_root() -> None:
    assert gateway_root("http://gw:8000/api/v1/") == "http://gw:8000"
    assert gateway_root("https://gw.example.com/v1") == "https://gw.example.com"
    assert gateway_root("http://gw:8000/prefix") == "http://gw:8000/prefix"


def _always(status: int) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.5":
            return httpx.Response(200, json={"data": []})
        return httpx.Response(status, json={"error": {"message": "bad"}})

    return handler
