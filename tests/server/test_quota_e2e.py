"""Quota properties through the live gateway: never overspent under concurrency, exact through hang-ups."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.fakes.upstream import prompt_tokens

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES = [{"role": "user", "content": "hi"}]


def settled_in_database(gateway: LiveGateway, account: str) -> tuple[int, int]:
    """(sum of the usage history, the window's durable total) for the account today."""
    ((account_id,),) = gateway.query("SELECT id FROM accounts WHERE name = :name", name=account)
    ((history,),) = gateway.query(
        "SELECT COALESCE(SUM(total_tokens), 0) FROM usage_events WHERE account_id = :a AND model = :m",
        a=account_id,
        m=LLAMA,
    )
    ((window,),) = gateway.query(
        "SELECT COALESCE(SUM(used), 0) FROM quota_usage WHERE account_id = :a AND model = :m", a=account_id, m=LLAMA
    )
    return int(history), int(window)  # type: ignore[call-overload]


@pytest.mark.parametrize("stream", [False, True])
def test_concurrent_requests_never_exceed_the_quota(gateway: LiveGateway, stream: bool) -> None:
    quota = 3000
    name, key = gateway.new_account("concurrent")
    gateway.set_quota(name, key, LLAMA, "api", quota)

    async def one(client: openai.AsyncOpenAI, max_tokens: int) -> int | None:
        try:
            if stream:
                chunks = await client.chat.completions.create(
                    model=LLAMA,
                    messages=MESSAGES,
                    max_tokens=max_tokens,
                    stream=True,  # type: ignore[arg-type]
                    stream_options={"include_usage": True},
                    extra_body={"mock": {"delay_ms": 2}},
                )
                usage = None
                async for chunk in chunks:
                    usage = chunk.usage or usage
                assert usage is not None
                return usage.total_tokens
            completion = await client.chat.completions.create(
                model=LLAMA,
                messages=MESSAGES,
                max_tokens=max_tokens,  # type: ignore[arg-type]
                extra_body={"mock": {"delay_ms": 2}},
            )
            assert completion.usage is not None
            return completion.usage.total_tokens
        except openai.RateLimitError as error:
            assert error.code == "insufficient_quota"
            return None

    async def burst() -> list[int | None]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with openai.AsyncOpenAI(
            api_key=key,
            base_url=gateway.base_url + "/",
            max_retries=0,
            http_client=httpx.AsyncClient(limits=limits, timeout=60),
        ) as client:
            return await asyncio.gather(*(one(client, 5 + i % 13) for i in range(300)))

    results = asyncio.run(burst())
    succeeded = [r for r in results if r is not None]
    refused = len(results) - len(succeeded)
    window = gateway.window(key, LLAMA)
    assert window["reserved"] == 0
    assert window["used"] <= quota
    assert window["used"] == sum(succeeded)  # the ledger is exactly the sum of what the clients were told
    assert refused > 0 and len(succeeded) > 10  # the quota really was the limit, and it was really used
    assert settled_in_database(gateway, name) == (sum(succeeded), sum(succeeded))


def test_stream_hang_up_is_charged_what_was_generated(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    cancelled_before = int(fake_upstream.stats()["cancelled"])  # type: ignore[call-overload]
    body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 17, "stream": True, "mock": {"delay_ms": 150}}
    received = 0
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {account[1]}"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                received += 1
            if received == 3:
                break  # hang up mid-stream
    assert received == 3
    deadline = time.monotonic() + 10
    while (
        gateway.window(account[1], LLAMA)["reserved"] != 0
        or int(fake_upstream.stats()["cancelled"]) == cancelled_before
    ):  # type: ignore[call-overload]
        assert time.monotonic() < deadline, "the reservation was not settled or the upstream never saw the cancel"
        time.sleep(0.05)
    used = gateway.window(account[1], LLAMA)["used"]
    # the prompt and the 3 tokens relayed (the 4th was 150 ms away when the client left)
    assert used == prompt_tokens(MESSAGES) + 3
    assert fake_upstream.stats()["in_flight"] == 0


def test_non_streaming_hang_up_cancels_the_upstream(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    requests_before = int(fake_upstream.stats()["requests"])  # type: ignore[call-overload]
    body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 17, "mock": {"delay_ms": 300}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.base_url + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {account[1]}"},
            timeout=0.5,
        )
    deadline = time.monotonic() + 10
    while gateway.window(account[1], LLAMA)["reserved"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stats = fake_upstream.stats()
    assert int(stats["requests"]) == requests_before + 1  # type: ignore[call-overload]
    window = gateway.window(account[1], LLAMA)
    assert window["used"] == prompt_tokens(MESSAGES)  # the prompt by the engine's count: no answer was delivered


def test_upstream_that_hangs_gives_504(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.conftest import catalog_for, start_gateway, stop

    live = start_gateway(
        tmp_path_factory.mktemp("short-timeout"),
        catalog_for(fake_upstream.url),
        {"MESHGATE_UPSTREAM_RESPONSE_TIMEOUT": "1"},
    )
    try:
        _, key = live.new_account()
        started = time.monotonic()
        response = httpx.post(
            live.base_url + "/chat/completions",
            timeout=30,
            json={"model": LLAMA, "messages": MESSAGES, "max_tokens": 3, "mock": {"hang": True}},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - started < 5
        assert live.window(key, LLAMA) == {**live.window(key, LLAMA), "used": 0, "reserved": 0}
    finally:
        assert live.process is not None
        stop(live.process)
