"""Replicas on one PostgreSQL + Redis: separate `meshgate serve` processes sharing a fresh schema and key prefix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import FakeUpstream, LiveGateway, catalog_for, shared_backend, start_gateway, stop

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES = [{"role": "user", "content": "hi"}]
TTL = 3.0  # MESHGATE_RESERVATION_TTL of these replicas: a SIGKILLed one's holds expire this soon


@dataclass
class Cluster:
    replicas: list[LiveGateway]
    backend: dict[str, str]

    @property
    def cli(self) -> LiveGateway:
        return self.replicas[0]


def start_replicas(
    root: Path, upstream: FakeUpstream, count: int = 2, extra_env: dict[str, str] | None = None
) -> Cluster:
    backend = shared_backend("scale")
    env = {"MESHGATE_RESERVATION_TTL": str(TTL), **(extra_env or {})}
    catalog = catalog_for(upstream.url)
    replicas = [start_gateway(root / f"replica{i}", catalog, env, backend=backend) for i in range(count)]
    return Cluster(replicas, backend)


@pytest.fixture
def cluster(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[Cluster]:
    made = start_replicas(tmp_path, fake_upstream)
    yield made
    for replica in made.replicas:
        if replica.process is not None:
            stop(replica.process)


def set_quota_everywhere(replicas: list[LiveGateway], account: str, key: str, tokens: int) -> None:
    replicas[0].cli("quota", "set", "--account", account, "--model", LLAMA, "--bucket", "api", "--tokens", str(tokens))
    deadline = time.monotonic() + 10
    for replica in replicas:
        while replica.window(key, LLAMA)["limit"] != tokens:
            assert time.monotonic() < deadline, "a replica did not pick up the quota override"
            time.sleep(0.05)


@dataclass
class Outcome:
    status: int
    code: str | None = None
    total_tokens: int = 0


async def burst(
    urls: list[str], key: str, count: int, body: dict[str, object], *, timeout: float = 120.0
) -> list[Outcome]:
    """`count` concurrent chat requests, spread round-robin over the gateways at `urls`."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one(i: int) -> Outcome:
            try:
                response = await client.post(urls[i % len(urls)] + "/chat/completions", json=body, headers=headers)
            except httpx.HTTPError:
                return Outcome(0)  # the replica went away mid-request
            data = response.json()
            if response.status_code == 200:
                return Outcome(200, None, int(data["usage"]["total_tokens"]))
            return Outcome(response.status_code, data["error"]["code"])

        return await asyncio.gather(*(one(i) for i in range(count)))


def chat(max_tokens: int, **mock: object) -> dict[str, object]:
    body: dict[str, object] = {"model": LLAMA, "messages": MESSAGES, "max_tokens": max_tokens}
    if mock:
        body["mock"] = mock
    return body


def history_total(replica: LiveGateway, account: str) -> int:
    ((total,),) = replica.query(
        "SELECT COALESCE(SUM(e.total_tokens), 0) FROM usage_events e JOIN accounts a ON a.id = e.account_id"
        " WHERE a.name = :name AND e.model = :model",
        name=account,
        model=LLAMA,
    )
    return int(total)  # type: ignore[call-overload]


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
