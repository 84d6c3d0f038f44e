"""Workers that join and leave, end to end: three fake engines, each registered by a real `meshgate worker`
process with a live gateway on a real Redis (a key prefix of its own), and a second gateway process on the
same Redis that routes to them too.

Redis: MESHGATE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); with CI=true an unreachable one fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import (
    BACKEND,
    MESHGATE,
    ROOT,
    TEST_REDIS_URL,
    FakeUpstream,
    LiveGateway,
    require_redis,
    shared_backend,
    start_fake_upstream,
    start_gateway,
    stop,
)

MODEL = "pool/chat"
OTHER = "pool/other"
CATALOG = f"""
[[models]]
id = "{MODEL}"
kind = "chat"
context_length = 8192
daily_quota = {{ api = 10000000 }}
upstreams = []

[[models]]
id = "{OTHER}"
kind = "chat"
context_length = 8192
daily_quota = {{ api = 10000000 }}
upstreams = []
"""


@dataclass
class Pool:
    gateway: LiveGateway
    second: LiveGateway  # another gateway process on the same Redis
    token: str
    engines: list[FakeUpstream]
    workers: list[subprocess.Popen[bytes]]
    home: Path
    logs: list[Any] = field(default_factory=list)

    def worker(self, engine: FakeUpstream, *extra: str, token: str | None = None) -> subprocess.Popen[bytes]:
        log = open(self.home / f"worker-{engine.port}.log", "ab")  # noqa: SIM115 - open while the worker runs
        self.logs.append(log)
        command = [
            *MESHGATE,
            "worker",
            "--gateway",
            f"http://127.0.0.1:{self.gateway.port}",
            "--model",
            MODEL,
            "--upstream",
            f"http://127.0.0.1:{engine.port}",
            "--engine",
            "vllm",
            "--max-concurrency",
            "64",
            *extra,
        ]
        env = {**self.gateway.env, "MESHGATE_WORKER_TOKEN": token or self.token}
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)

    def replicas(self, gateway: LiveGateway | None = None, token: str | None = None) -> list[dict[str, Any]]:
        live = gateway or self.gateway
        response = httpx.get(
            f"http://127.0.0.1:{live.port}/internal/workers",
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return [row for row in response.json()["data"] if row["model"] == MODEL]

    def wait_for(self, ports: set[int], gateway: LiveGateway | None = None, timeout: float = 15.0) -> float:
        """Until the registered replicas are exactly the engines on `ports`; returns the seconds it took."""
        started = time.monotonic()
        wanted = {f"http://127.0.0.1:{port}/v1" for port in ports}
        while True:
            seen = {row["url"] for row in self.replicas(gateway) if row["source"] == "registered"}
            if seen == wanted:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"replicas {seen}, expected {wanted}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    require_redis()
    prefix = f"mgtest:{os.urandom(6).hex()}:"
    home = tmp_path_factory.mktemp("workers")
    # Both gateway processes on one Redis (and one database: the home's SQLite, or one PostgreSQL schema).
    env = {"MESHGATE_REDIS_URL": TEST_REDIS_URL, "MESHGATE_REDIS_PREFIX": prefix}
    if BACKEND == "postgres-redis":
        env = shared_backend("workers")
        prefix = env["MESHGATE_REDIS_PREFIX"]
    gateway = start_gateway(home, CATALOG, backend=env)
    second = start_gateway(home, CATALOG, backend=env)
    token = gateway.cli("workers", "token", "create", "--name", "e2e").stdout.strip().splitlines()[-1]
    engines = [start_fake_upstream() for _ in range(3)]
    setup = Pool(gateway, second, token, engines, [], home)
    try:
        setup.workers = [setup.worker(engine) for engine in engines]
        setup.wait_for({e.port for e in engines})
        yield setup
    finally:
        for process in [*setup.workers, *(e.process for e in setup.engines)]:
            stop(process)
        for live in (gateway, second):
            assert live.process is not None
            stop(live.process)
        for log in setup.logs:
            log.close()
        client = redis.Redis.from_url(TEST_REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


def _chat(pool: Pool, key: str, n: int, mock: dict[str, Any], gateway: LiveGateway | None = None) -> list[Any]:
    live = gateway or pool.gateway
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5, "mock": mock}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{live.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                    )
                    for _ in range(n)
                )
            )

    return asyncio.run(burst())


def _served(engines: list[FakeUpstream]) -> list[int]:
    return [int(e.stats()["requests"]) for e in engines]


def test_load_spreads_by_outstanding_requests(pool: Pool) -> None:
    _, key = pool.gateway.new_account()
    before = _served(pool.engines)
    responses = _chat(pool, key, 60, {"delay_ms": 40})
    assert [r.status_code for r in responses] == [200] * 60
    served = [after - b for after, b in zip(_served(pool.engines), before, strict=True)]
    assert sum(served) == 60 and min(served) >= 12, served  # least outstanding: about 20 each
    rows = pool.replicas()
    assert all(row["healthy"] and row["last_heartbeat"] > time.time() - 10 for row in rows)
    assert {row["served_model"] for row in rows} == {"fake-model"}  # as the engine's /v1/models says


def test_an_engine_killed_mid_load_fails_cleanly_is_avoided_and_rejoins(pool: Pool) -> None:
    account, key = pool.gateway.new_account()
    victim = pool.engines[0]
    before = _served(pool.engines[1:])
    killed_at = [0.0]

    async def load_then_kill() -> list[httpx.Response]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10}
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [
                asyncio.ensure_future(
                    client.post(
                        f"{pool.gateway.base_url}/chat/completions",
                        json={**body, "mock": {"delay_ms": 150}},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                )
                for _ in range(30)
            ]
            deadline = time.monotonic() + 10
            while int((await client.get(f"http://127.0.0.1:{victim.port}/mock/stats")).json()["in_flight"]) < 5:
                assert time.monotonic() < deadline, "the victim got no requests"
                await asyncio.sleep(0.02)
            victim.process.kill()  # SIGKILL mid-answer: its connections drop
            killed_at[0] = time.monotonic()
            victim.process.wait()
            return list(await asyncio.gather(*tasks))

    responses = asyncio.run(load_then_kill())
    # Nothing of theirs had reached the client (vLLM sends a plain answer's headers when it is done), so the
    # requests the engine took down with it were sent again to the other replicas: none failed.
    assert [r.status_code for r in responses] == [200] * 30
    used = sum(r.json()["usage"]["total_tokens"] for r in responses)
    window = pool.gateway.window(key, MODEL)
    assert (window["used"], window["reserved"]) == (used, 0)  # every reservation settled once
    assert sum(_served(pool.engines[1:])) - sum(before) >= 30

    # New requests avoid it at once (a refused connect moves on to another replica, and the breaker opens) ...
    client = pool.gateway.client(key)
    for _ in range(10):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    # ... and it leaves the pool when its worker stops heartbeating (the engine is unhealthy), within 10 s.
    pool.wait_for({e.port for e in pool.engines[1:]}, timeout=10)
    took = time.monotonic() - killed_at[0]
    assert took < 10
    print(f"\nthe killed engine left the pool {took:.1f} s after the kill")

    # Restarted on the same port, it rejoins (its worker heartbeats again, re-registering) and gets requests.
    pool.engines[0] = start_fake_upstream(victim.port)
    back = pool.wait_for({e.port for e in pool.engines}, timeout=15)
    print(f"the restarted engine was back in the pool {back:.1f} s after it answered again")
    _chat(pool, key, 30, {"delay_ms": 20})
    assert int(pool.engines[0].stats()["requests"]) >= 5
    assert pool.gateway.settled(account, 1)


def test_a_stream_on_a_killed_engine_ends_with_an_error_event(pool: Pool) -> None:
    account, key = pool.gateway.new_account()
    client = pool.gateway.client(key)
    victim_index = 2
    victim = pool.engines[victim_index]
    streams = [
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "go"}],
            max_tokens=15,
            stream=True,
            extra_body={"mock": {"delay_ms": 200}},
        )
        for _ in range(6)
    ]
    firsts = [next(iter(stream)) for stream in streams]  # every stream has started
    assert all(first.choices[0].delta.role == "assistant" for first in firsts)
    victim.process.kill()
    victim.process.wait()
    errors = 0
    for stream in streams:
        try:
            for _ in stream:
                pass
        except openai.APIError as exc:
            errors += 1
            assert "upstream" in str(exc)
    assert errors >= 1  # the streams on the killed engine ended with an error event, the others finished
    window = pool.gateway.window(key, MODEL)
    assert window["reserved"] == 0 and window["used"] > 0  # what was delivered is charged, the rest released
    pool.engines[victim_index] = start_fake_upstream(victim.port)
    pool.wait_for({e.port for e in pool.engines}, timeout=15)
    assert len(pool.gateway.settled(account, 6)) == 6


def test_prompts_are_counted_by_a_registered_engine(pool: Pool) -> None:
    account, key = pool.gateway.new_account()
    pool.gateway.set_quota(account, key, MODEL, "api", 60)
    calls = sum(int(e.stats()["tokenize_calls"]) for e in pool.engines)
    # 120 bytes: their bound does not fit 60 tokens, the engine's count (24) does.
    answer = pool.gateway.client(key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello " * 20}], max_tokens=5
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == 24
    assert sum(int(e.stats()["tokenize_calls"]) for e in pool.engines) > calls


def test_a_second_gateway_process_routes_to_workers_registered_through_the_first(pool: Pool) -> None:
    pool.wait_for({e.port for e in pool.engines}, gateway=pool.second, timeout=5)
    _, key = pool.gateway.new_account()
    before = sum(_served(pool.engines))
    responses = _chat(pool, key, 12, {"delay_ms": 10}, gateway=pool.second)
    assert [r.status_code for r in responses] == [200] * 12
    assert sum(_served(pool.engines)) - before == 12


def test_worker_tokens_and_api_keys_are_not_interchangeable(pool: Pool) -> None:
    _, key = pool.gateway.new_account()
    chat = httpx.post(
        f"{pool.gateway.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {pool.token}"},
    )
    assert chat.status_code == 401
    assert chat.json()["error"]["code"] == "invalid_api_key" and "worker token" in chat.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        pool.gateway.client(pool.token).models.list()
    register = httpx.post(
        f"http://127.0.0.1:{pool.gateway.port}/internal/workers/register",
        json={"model": MODEL, "upstream": "http://127.0.0.1:9/v1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert register.status_code == 401 and "API keys cannot register" in register.json()["error"]["message"]
    listing = httpx.get(
        f"http://127.0.0.1:{pool.gateway.port}/internal/workers", headers={"Authorization": f"Bearer {key}"}
    )
    assert listing.status_code == 403  # not an admin account's key
    admin = f"admin-{os.urandom(4).hex()}"
    pool.gateway.cli("accounts", "create", admin, "--admin")
    admin_key = pool.gateway.cli("keys", "create", "--account", admin).stdout.strip().splitlines()[-1]
    assert len(pool.replicas(token=admin_key)) == 3  # an admin's API key may look at the pool
    idle = httpx.post(  # a model no worker serves yet: a clean 503, nothing charged
        f"{pool.gateway.base_url}/chat/completions",
        json={"model": OTHER, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert idle.status_code == 503 and idle.json()["error"]["code"] == "no_upstream"
    assert pool.gateway.window(key, OTHER)["used"] == 0


def _register(pool: Pool, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {} if token == "" else {"Authorization": f"Bearer {token or pool.token}"}
    url = f"http://127.0.0.1:{pool.gateway.port}/internal/workers/register"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={**headers, "Content-Type": "application/json"}, **kwargs)
    return httpx.post(url, json=body, headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL, "upstream": "https://10.0.0.1:8000/v1"}, 400, "upstream"),
        ({"model": MODEL, "upstream": "http://user:pw@10.0.0.1:8000/v1"}, 400, "upstream"),
        ({"model": MODEL, "upstream": "http://10.0.0.1:70000/v1"}, 400, "upstream"),
        ({"model": MODEL, "upstream": "not a url"}, 400, "upstream"),
        ({"model": "no/such-model", "upstream": "http://10.0.0.1:8000/v1"}, 400, "model"),
        ({"model": MODEL, "upstream": "http://10.0.0.1:8000/v1", "max_concurrency": -3}, 400, "max_concurrency"),
        ({"model": MODEL, "upstream": "http://10.0.0.1:8000/v1", "gpus": 8}, 400, "gpus"),
        ({"model": MODEL, "upstream": "http://10.0.0.1:8000/v1", "load": {"kv_cache": 7}}, 400, "load.kv_cache"),
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "' + b"x" * 20000 + b'"}', 413, None),
    ],
)
def test_bad_registrations_get_the_openai_envelope(pool: Pool, body: Any, status: int, param: str | None) -> None:
    response = _register(pool, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_refusals_before_any_registration(pool: Pool) -> None:
    good = {"model": MODEL, "upstream": "http://10.0.0.1:8000/v1"}
    assert _register(pool, good, token="").status_code == 401
    assert _register(pool, good, token="mgw-" + "x" * 43).status_code == 401
    scoped = pool.gateway.cli("workers", "token", "create", "--models", OTHER).stdout.strip().splitlines()[-1]
    refused = _register(pool, good, token=scoped)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "model"
    bad_method = httpx.get(f"http://127.0.0.1:{pool.gateway.port}/internal/workers/register")
    assert bad_method.status_code == 405 and bad_method.json()["error"]["code"] == "method_not_allowed"
    heartbeat = httpx.post(
        f"http://127.0.0.1:{pool.gateway.port}/internal/workers/heartbeat",
        json={"id": "wk-unknown"},
        headers={"Authorization": f"Bearer {pool.token}"},
    )
    assert heartbeat.status_code == 404 and heartbeat.json()["error"]["code"] == "unknown_worker"
    revoked = pool.gateway.cli("workers", "token", "create").stdout.strip().splitlines()[-1]
    token_id = revoked.split("-")[1]
    pool.gateway.cli("workers", "token", "revoke", token_id)
    deadline = time.monotonic() + 5
    while _register(pool, {**good, "model": OTHER}, token=revoked).status_code != 401:
        assert time.monotonic() < deadline, "a revoked token still registers"
        time.sleep(0.2)
    listing = pool.gateway.cli("workers", "token", "list").stdout
    assert f"{token_id}\t\t" in listing and "revoked" in listing


def test_a_token_that_floods_the_worker_api_gets_429_and_the_fleet_is_untouched(pool: Pool) -> None:
    flooder = pool.gateway.cli("workers", "token", "create", "--name", "flood").stdout.strip().splitlines()[-1]
    url = f"http://127.0.0.1:{pool.gateway.port}/internal/workers/heartbeat"

    client = httpx.Client(limits=httpx.Limits(max_connections=8))  # shared: a client per request costs ~30 ms

    def beat(token: str) -> httpx.Response:
        return client.post(url, json={"id": "wk-unknown"}, headers={"Authorization": f"Bearer {token}"})

    refused: httpx.Response | None = None
    with client, ThreadPoolExecutor(8) as threads:
        for _ in range(20):  # the limit is 64/s after a burst of 128 (64 workers a token, a heartbeat every 2 s)
            answers = list(threads.map(beat, [flooder] * 150))
            assert {a.status_code for a in answers} <= {404, 429}
            refused = next((a for a in answers if a.status_code == 429), None)
            if refused is not None:
                break
    assert refused is not None, "3,000 heartbeats of one token were never limited"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and set(error) == {"message", "type", "param", "code"}
    assert int(refused.headers["retry-after"]) >= 1
    assert (
        httpx.post(url, json={"id": "wk-unknown"}, headers={"Authorization": f"Bearer {pool.token}"}).status_code == 404
    )
    # (another token's bucket: the fleet heartbeats on)
    pool.wait_for({e.port for e in pool.engines}, timeout=5)


def test_a_worker_stopped_with_sigterm_deregisters_at_once_and_the_cli_lists_the_pool(pool: Pool) -> None:
    extra = start_fake_upstream()
    worker = pool.worker(extra)
    try:
        pool.wait_for({e.port for e in [*pool.engines, extra]})
        listed = pool.gateway.cli(
            "workers", "list", "--gateway", f"http://127.0.0.1:{pool.gateway.port}/api/v1", "--token", pool.token
        ).stdout
        lines = [line.split("\t") for line in listed.splitlines()[1:] if line.startswith(MODEL)]
        assert len(lines) == 4 and {line[1] for line in lines} == {"registered"}
        assert all(line[4] == "up" and line[-1].endswith("s ago") for line in lines)
        worker.terminate()
        assert worker.wait(10) == 0
        took = pool.wait_for({e.port for e in pool.engines}, timeout=3)  # no lease to wait out
        assert took < 3
    finally:
        stop(worker)
        stop(extra.process)


@pytest.mark.embedded_ledger  # no Redis: the registry is the gateway's memory
def test_without_redis_a_worker_registers_again_after_the_gateway_restarts(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Single-process mode: registrations live in the gateway's memory, so a restart forgets them."""
    home = tmp_path_factory.mktemp("workers-memory")
    gateway = start_gateway(home, CATALOG, {"MESHGATE_WORKER_TTL": "3"})
    engine = start_fake_upstream()
    token = gateway.cli("workers", "token", "create").stdout.strip().splitlines()[-1]
    pool = Pool(gateway, gateway, token, [engine], [], home)
    worker = pool.worker(engine)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        pool.wait_for({engine.port})
        assert gateway.process is not None
        stop(gateway.process)
        with open(home / "serve.log", "ab") as log:
            restarted = subprocess.Popen(
                [*MESHGATE, "serve", "--config", str(home / "catalog.toml"), "--port", str(gateway.port)],
                env=gateway.env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        gateway.process = restarted
        deadline = time.monotonic() + 20
        while True:  # the worker's next heartbeat gets 404 and it registers again
            try:
                if {row["url"] for row in pool.replicas()} == {engine.url}:
                    break
            except (httpx.HTTPError, AssertionError):
                pass
            assert time.monotonic() < deadline, "the worker did not register again"
            time.sleep(0.2)
        _, key = gateway.new_account()
        answer = gateway.client(key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert answer.choices[0].message.content
    finally:
        stop(worker)
        stop(engine.process)
        if restarted is not None:
            stop(restarted)
        elif gateway.process is not None:
            stop(gateway.process)
        for log in pool.logs:
            log.close()
