"""Routing through the live gateway: a dead replica is skipped, a model with none left gets a clean 503."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FakeUpstream, LiveGateway, free_port, start_fake_upstream, start_gateway, stop

Setup = tuple[LiveGateway, FakeUpstream, FakeUpstream]


@pytest.fixture
def two_replica_gateway(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    second = start_fake_upstream()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    catalog = f"""
[[models]]
id = "spread"
context_length = 4096
daily_quota = {{ api = 100000 }}
[[models.upstreams]]
url = "{fake_upstream.url}"
[[models.upstreams]]
url = "{second.url}"
[[models.upstreams]]
url = "{dead}"

[[models]]
id = "orphan"
context_length = 4096
daily_quota = {{ api = 100000 }}
[[models.upstreams]]
url = "{dead}"
"""
    live = start_gateway(tmp_path_factory.mktemp("routing"), catalog)
    yield live, fake_upstream, second
    assert live.process is not None
    stop(live.process)
    stop(second.process)


def test_load_spreads_and_dead_replica_is_skipped(two_replica_gateway: Setup) -> None:
    live, first, second = two_replica_gateway
    _, key = live.new_account()
    before = (int(first.stats()["requests"]), int(second.stats()["requests"]))
    body = {
        "model": "spread",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "mock": {"delay_ms": 20},
    }

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        live.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                    )
                    for _ in range(40)
                )
            )
            return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert statuses == [200] * 40  # the dead replica cost no request an error
    served = (int(first.stats()["requests"]) - before[0], int(second.stats()["requests"]) - before[1])
    assert sum(served) == 40 and min(served) >= 10  # least-outstanding spread the burst over both


def test_model_without_live_replica_is_503_and_costs_nothing(two_replica_gateway: Setup) -> None:
    live = two_replica_gateway[0]
    _, key = live.new_account()
    response = httpx.post(
        live.base_url + "/chat/completions",
        json={"model": "orphan", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_upstream"
    assert live.window(key, "orphan") == {**live.window(key, "orphan"), "used": 0, "reserved": 0}
