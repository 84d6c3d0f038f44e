"""The worker registry (in memory and on a real Redis), the membership that applies it, and the pool's choice.

Redis tests use MESHGATE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0) with a key prefix of their
own; with CI=true an unreachable Redis fails them instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from meshgate.catalog.spec import UpstreamSpec
from meshgate.protocol.errors import ApiError
from meshgate.workers.engine_probe import parse_metrics
from meshgate.workers.membership import Membership
from meshgate.workers.pool import Replica, ReplicaSet
from meshgate.workers.registration import normalize_upstream, parse_heartbeat, parse_register
from meshgate.workers.registry import Load, MemoryRegistry, Registration, RegistryFull, registration_id
from meshgate.workers.registry_redis import RedisRegistry
from tests.conftest import TEST_REDIS_URL, require_redis


def reg(url: str, token: str = "tok1", model: str = "m", **kw: Any) -> Registration:
    return Registration(registration_id(model, url), token, model, url, model, **kw)


@pytest.fixture(params=["memory", "redis"])
async def make_registry(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[float], Any]]:
    made: list[Any] = []
    prefix = f"mgtest:{os.urandom(6).hex()}:"
    if request.param == "redis":
        require_redis()

    def factory(ttl: float) -> Any:
        registry = (
            MemoryRegistry(ttl) if request.param == "memory" else RedisRegistry(TEST_REDIS_URL, prefix=prefix, ttl=ttl)
        )
        made.append(registry)
        return registry

    yield factory
    for registry in made:
        await registry.close()
    if request.param == "redis":
        client = redis.Redis.from_url(TEST_REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


async def test_register_heartbeat_remove(make_registry: Callable[[float], Any]) -> None:
    registry = make_registry(5.0)
    one = reg("http://10.0.0.1:8000/v1", max_concurrency=8)
    await registry.register(one, 10, 10)
    [live] = await registry.live()
    assert (live.id, live.url, live.max_concurrency, live.token_id) == (one.id, one.url, 8, "tok1")
    assert abs(live.heartbeat_at - time.time()) < 5
    assert await registry.heartbeat(one.id, "tok1", Load(3, 1, 0.5))
    [live] = await registry.live()
    assert live.load == Load(3, 1, 0.5)
    assert not await registry.heartbeat(one.id, "other-token", Load())  # only its own token renews it
    assert not await registry.remove(one.id, "other-token")
    assert await registry.remove(one.id, "tok1")
    assert await registry.live() == []
    assert not await registry.heartbeat(one.id, "tok1", Load())  # gone: the worker must register again


async def test_the_lease_runs_out_without_heartbeats(make_registry: Callable[[float], Any]) -> None:
    registry = make_registry(0.4)
    one, two = reg("http://10.0.0.1:8000/v1"), reg("http://10.0.0.2:8000/v1")
    await registry.register(one, 10, 10)
    await registry.register(two, 10, 10)
    deadline = time.monotonic() + 5
    while {r.id for r in await registry.live()} != {one.id}:
        assert time.monotonic() < deadline, "the silent worker did not expire"
        await registry.heartbeat(one.id, "tok1", Load())
        await asyncio.sleep(0.1)
    assert not await registry.heartbeat(two.id, "tok1", Load())


async def test_caps_in_all_and_per_token(make_registry: Callable[[float], Any]) -> None:
    registry = make_registry(5.0)
    await registry.register(reg("http://10.0.0.1:1/v1"), 3, 2)
    await registry.register(reg("http://10.0.0.2:1/v1"), 3, 2)
    with pytest.raises(RegistryFull, match="token"):
        await registry.register(reg("http://10.0.0.3:1/v1"), 3, 2)
    await registry.register(reg("http://10.0.0.1:1/v1"), 3, 2)  # the same engine again takes its own place
    await registry.register(reg("http://10.0.0.4:1/v1", token="tok2"), 3, 2)
    with pytest.raises(RegistryFull, match="already has 3"):
        await registry.register(reg("http://10.0.0.5:1/v1", token="tok3"), 3, 2)
    assert len(await registry.live()) == 3


async def test_two_processes_see_the_same_workers_on_redis() -> None:
    require_redis()
    prefix = f"mgtest:{os.urandom(6).hex()}:"
    a, b = RedisRegistry(TEST_REDIS_URL, prefix=prefix, ttl=5), RedisRegistry(TEST_REDIS_URL, prefix=prefix, ttl=5)
    try:
        one = reg("http://10.0.0.9:8000/v1")
        await a.register(one, 10, 10)
        assert [r.id for r in await b.live()] == [one.id]
        assert await b.heartbeat(one.id, "tok1", Load(running=2))
        assert (await a.live())[0].load.running == 2
        assert await b.remove(one.id, "tok1")
        assert await a.live() == []
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- membership and the pool


def test_membership_joins_updates_and_leaves() -> None:
    catalog = Replica(UpstreamSpec("http://catalog:8000/v1", "m"))
    pool = ReplicaSet([catalog])
    now = [1000.0]
    registry = MemoryRegistry(6.0)
    members = Membership(registry, {"m": pool}, clock=lambda: now[0])
    one = reg("http://10.0.0.1:8000/v1", heartbeat_at=1000.0, load=Load(1, 2, 0.1))
    same_as_catalog = reg("http://CATALOG:8000/v1/", heartbeat_at=1000.0)
    unknown_model = reg("http://10.0.0.2:8000/v1", model="not-in-catalog", heartbeat_at=1000.0)
    members.apply([one, same_as_catalog, unknown_model])
    assert [r.source for r in pool.replicas] == ["catalog", "registered"]
    joined = pool.replicas[1]
    assert (joined.worker_id, joined.queued, joined.running, joined.kv_cache) == (one.id, 2, 1, 0.1)
    joined.in_flight = 3
    members.apply([reg(one.url, heartbeat_at=1002.0, load=Load(0, 0, 0.0))])
    assert pool.replicas[1] is joined and joined.in_flight == 3 and joined.queued == 0  # updated in place
    now[0] = 1008.1  # the last heartbeat is older than the lease: out, even if the registry could not be read
    members.apply([reg(one.url, heartbeat_at=1002.0)])
    assert pool.replicas == [catalog]
    views = members.views()
    assert [(v.source, v.url) for v in views] == [("catalog", "http://catalog:8000/v1")]


def test_pick_prefers_replicas_with_room_and_counts_what_is_queued() -> None:
    a, b, c = (Replica(UpstreamSpec(f"http://10.0.0.{i}:1/v1", "m")) for i in (1, 2, 3))
    pool = ReplicaSet([a])
    pool.add(b)  # registered workers joined: their reports count
    pool.add(c)
    a.in_flight, b.in_flight, c.in_flight = 1, 2, 2
    assert pool.pick() is a
    a.queued = 5  # its engine has requests of other gateways waiting
    assert pool.pick() in (b, c)
    b.max_concurrency, b.in_flight = 2, 2  # full
    c.kv_cache = 0.99  # KV cache full
    assert pool.pick() is a  # the only one with room, however loaded
    a.max_concurrency, a.in_flight = 1, 1
    assert pool.pick() in (a, b, c)  # all full: the least loaded still gets it
    pool.remove(b)
    assert b not in pool.replicas
    pool.add(b)
    assert pool.replicas[-1] is b
    plain = ReplicaSet([Replica(UpstreamSpec("http://x:1/v1", "m")), Replica(UpstreamSpec("http://y:1/v1", "m"))])
    plain.replicas[0].in_flight = 1
    assert plain.pick() is plain.replicas[1]  # catalog upstreams only: least outstanding


def test_metrics_of_each_engine() -> None:
    vllm = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 4.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.3
"""
    assert parse_metrics(vllm, "vllm") == Load(5, 4, pytest.approx(0.4))
    old_vllm = 'vllm:num_requests_running{model_name="x"} 1\nvllm:num_requests_waiting{model_name="x"} 0\nvllm:gpu_cache_usage_perc{model_name="x"} 0.25\n'
    assert parse_metrics(old_vllm, "auto") == Load(1, 0, 0.25)
    sglang = 'sglang:num_running_reqs{model_name="q"} 7\nsglang:num_queue_reqs{model_name="q"} 2\nsglang:token_usage{model_name="q"} 0.28\n'
    assert parse_metrics(sglang, "sglang") == Load(7, 2, 0.28)
    assert parse_metrics("llamacpp:requests_processing 1\nllamacpp:requests_deferred 3\n", "llamacpp") == Load(1, 3)
    assert parse_metrics("tgi_queue_size 2\ntgi_batch_current_size 6\n", "auto") == Load(6, 2)
    assert parse_metrics("garbage\nsomething_else 1\n", "auto") == Load()


# ---------------------------------------------------------------- what a registration may say


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000/v1"),
        ("http://gpu-1.internal:8000/v1/", "http://gpu-1.internal:8000/v1"),
        ("http://[fd00::5]:8000/v1", "http://[fd00::5]:8000/v1"),
        ("http://host/proxy/v1", "http://host/proxy/v1"),
    ],
)
def test_upstream_urls_accepted(url: str, expected: str) -> None:
    assert normalize_upstream(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5:8000/v1",
        "ftp://10.0.0.5/v1",
        "http://:8000/v1",
        "http://user:pw@host:8000/v1",
        "http://host:99999/v1",
        "http://host:8000/v1?x=1",
        "http://ho st:8000/v1",
        "10.0.0.5:8000",
        "http://" + "a" * 3000,
        42,
        None,
    ],
)
def test_upstream_urls_refused(url: object) -> None:
    with pytest.raises(ApiError) as refused:
        normalize_upstream(url)
    assert refused.value.status == 400 and refused.value.param == "upstream"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"upstream": "http://h:1/v1"}, "model"),
        ({"model": "m", "upstream": "http://h:1/v1", "max_concurrency": 0}, "max_concurrency"),
        ({"model": "m", "upstream": "http://h:1/v1", "max_concurrency": True}, "max_concurrency"),
        ({"model": "m", "upstream": "http://h:1/v1", "engine": "tensorrt"}, "engine"),
        ({"model": "m", "upstream": "http://h:1/v1", "load": {"kv_cache": 2}}, "load.kv_cache"),
        ({"model": "m", "upstream": "http://h:1/v1", "load": {"running": -1}}, "load.running"),
        ({"model": "m", "upstream": "http://h:1/v1", "load": {"gpu": 1}}, "load.gpu"),
        ({"model": "m", "upstream": "http://h:1/v1", "extra": 1}, "extra"),
    ],
)
def test_bad_registrations_name_the_field(body: object, param: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        parse_register(body)
    assert refused.value.status == 400 and refused.value.param == param


def test_a_good_registration_and_heartbeat() -> None:
    request = parse_register(
        {"model": "m", "upstream": "http://h:1", "max_concurrency": 4, "engine": "vllm", "load": {"running": 1}}
    )
    assert (request.upstream, request.served_model, request.max_concurrency, request.load) == (
        "http://h:1/v1",
        "m",
        4,
        Load(running=1),
    )
    assert parse_heartbeat({"id": "wk-1", "load": {"waiting": 2, "kv_cache": 0.5}}) == ("wk-1", Load(None, 2, 0.5))
    with pytest.raises(ApiError):
        parse_heartbeat({"id": ""})
