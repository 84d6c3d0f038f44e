"""Exact prompt counts fall back to None (the byte bound) whenever the engine cannot count."""

from __future__ import annotations

from meshgate.catalog.spec import UpstreamSpec
from meshgate.workers.http_client import HttpClient
from meshgate.workers.pool import Replica
from meshgate.workers.prompt_count import LlamaCppPromptCounter
from tests.conftest import FakeUpstream, free_port

BODY = {"messages": [{"role": "user", "content": "hi"}]}


async def test_engine_without_the_endpoints_gives_none(fake_upstream: FakeUpstream) -> None:
    counter = LlamaCppPromptCounter(HttpClient(), Replica(UpstreamSpec(url=fake_upstream.url, model="m")))
    assert await counter.count(BODY) is None  # the fake engine answers 404 to /apply-template


async def test_unreachable_or_unhealthy_engine_gives_none() -> None:
    replica = Replica(UpstreamSpec(url=f"http://127.0.0.1:{free_port()}/v1", model="m"))
    counter = LlamaCppPromptCounter(HttpClient(), replica)
    assert await counter.count(BODY) is None
    replica.healthy = False
    assert await counter.count(BODY) is None
