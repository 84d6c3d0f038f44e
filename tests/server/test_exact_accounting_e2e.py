"""Exact accounting in every case, end to end: model names in streams, hang-ups before the first
byte, exact counts from the engine's /tokenize, stream time limits, scoped keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from tests.conftest import FakeUpstream, LiveGateway, start_fake_upstream, start_gateway, stop
from tests.fakes.upstream import prompt_tokens

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"  # served by the fake as "served-llama"
TINY = "tiny/Context-64"
HI = [{"role": "user", "content": "hi"}]
HI_TOKENS = prompt_tokens(HI)  # 5, as the fake engine counts (and reports) it


def catalog(upstream_url: str) -> str:
    return f"""
[[models]]
id = "{LLAMA}"
kind = "chat"
context_length = 128000
daily_quota = {{ api = 500000 }}
[[models.upstreams]]
url = "{upstream_url}"
model = "served-llama"

[[models]]
id = "{TINY}"
kind = "chat"
context_length = 64
daily_quota = {{ api = 500000 }}
[[models.upstreams]]
url = "{upstream_url}"

[[models]]
id = "other/Model"
kind = "chat"
context_length = 8000
daily_quota = {{ api = 500000 }}
[[models.upstreams]]
url = "{upstream_url}"
"""


@pytest.fixture(scope="module")
def live(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("exact"), catalog(fake_upstream.url), {"MESHGATE_STREAM_IDLE_TIMEOUT": "1"}
    )
    yield gateway
    assert gateway.process is not None
    stop(gateway.process)


@pytest.fixture(scope="module")
def no_tokenize(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, FakeUpstream]]:
    upstream = start_fake_upstream(None, "--no-tokenize")
    gateway = start_gateway(tmp_path_factory.mktemp("no-tokenize"), catalog(upstream.url))
    yield gateway, upstream
    assert gateway.process is not None
    stop(gateway.process)
    stop(upstream.process)


def history(gateway: LiveGateway, account: str) -> list[tuple[int, int, str]]:
    return gateway.settled(account, timeout=0)


def wait_for(condition: object, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sse_events(response: httpx.Response) -> list[dict[str, object]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(orjson.loads(line[6:]))
    return events


# ---------------------------------------------------------------- 1. model names in streams


@pytest.mark.parametrize("spaced", [False, True])
def test_every_stream_event_names_the_catalog_model(live: LiveGateway, spaced: bool) -> None:
    _, key = live.new_account()
    body = {
        "model": LLAMA,
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 5,
        "mock": {"spaced": spaced},
    }
    with httpx.stream(
        "POST", live.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        raw = b"".join(response.iter_bytes())
    assert b"served-llama" not in raw
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    assert len(events) == 1 + 5 + 1 + 1  # role, 5 tokens, finish, usage
    assert all(event["model"] == LLAMA for event in events)
    assert events[-1]["usage"]["completion_tokens"] == 5 and not events[-1]["choices"]


# ---------------------------------------------------------------- 2. hang-ups before the first byte


def test_plain_request_whose_client_leaves_is_cancelled_and_charged_the_prompt(
    live: LiveGateway, fake_upstream: FakeUpstream
) -> None:
    name, key = live.new_account()
    cancelled = fake_upstream.stats()["cancelled"]
    body = {"model": LLAMA, "messages": HI, "max_tokens": 17, "mock": {"delay_ms": 300}}  # ~5 s to answer
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            live.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=0.5
        )
    left = time.monotonic()
    wait_for(lambda: fake_upstream.stats()["cancelled"] == cancelled + 1, what="the engine to see the cancel")
    assert time.monotonic() - left < 1.0  # the bound: cancelled upstream within a second
    wait_for(lambda: history(live, name), what="the settlement")
    assert history(live, name) == [(HI_TOKENS, 0, "client_disconnect")]  # the prompt by the engine's count
    window = live.window(key, LLAMA)
    assert (window["used"], window["reserved"]) == (HI_TOKENS, 0)


def test_stream_whose_client_leaves_before_the_first_token_is_cancelled(
    live: LiveGateway, fake_upstream: FakeUpstream
) -> None:
    name, key = live.new_account()
    cancelled = fake_upstream.stats()["cancelled"]
    body = {"model": LLAMA, "messages": HI, "stream": True, "mock": {"stall_after": 0}}

    async def leave_early() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            headers = {"Authorization": f"Bearer {key}"}
            async with client.stream("POST", live.base_url + "/chat/completions", json=body, headers=headers) as r:
                assert r.status_code == 200
                await asyncio.sleep(0.3)  # no token comes; the client gives up

    asyncio.run(leave_early())
    wait_for(lambda: fake_upstream.stats()["cancelled"] == cancelled + 1, what="the engine to see the cancel")
    wait_for(lambda: history(live, name), what="the settlement")
    assert history(live, name) == [(HI_TOKENS, 0, "client_disconnect")]


# ---------------------------------------------------------------- 3. exact counts where the bound does not fit


def test_two_word_prompt_on_a_100_token_quota_is_admitted_and_charged_exactly(
    live: LiveGateway, fake_upstream: FakeUpstream
) -> None:
    name, key = live.new_account()
    live.set_quota(name, key, LLAMA, "api", 100)
    messages = [{"role": "user", "content": "hello there"}]
    # The byte bound (64 + 16 + 11 + 4 = 95) plus 10 does not fit in 100; the engine counts 6.
    calls = fake_upstream.stats()["tokenize_calls"]
    completion = live.client(key).chat.completions.create(model=LLAMA, messages=messages, max_tokens=10)  # type: ignore[arg-type]
    assert completion.usage is not None and completion.usage.total_tokens == 6 + 10
    assert fake_upstream.stats()["tokenize_calls"] == calls + 1
    window = live.window(key, LLAMA)
    assert (window["used"], window["reserved"], window["remaining"]) == (16, 0, 84)
    # Without max_tokens the request gets all that is left of the quota: 84 - 6 completion tokens.
    live.client(key).chat.completions.create(model=LLAMA, messages=messages)  # type: ignore[arg-type]
    assert fake_upstream.stats()["last_body"]["max_tokens"] == 84 - 6  # type: ignore[index]


def test_a_bound_that_fits_asks_the_engine_nothing(live: LiveGateway, fake_upstream: FakeUpstream) -> None:
    _, key = live.new_account()
    calls = fake_upstream.stats()["tokenize_calls"]
    live.client(key).chat.completions.create(model=LLAMA, messages=HI, max_tokens=10)  # type: ignore[arg-type]
    assert fake_upstream.stats()["tokenize_calls"] == calls


def test_prompt_over_a_64_token_context_is_refused_before_any_completion(
    live: LiveGateway, fake_upstream: FakeUpstream
) -> None:
    name, key = live.new_account()
    requests = fake_upstream.stats()["requests"]
    words = [{"role": "user", "content": " ".join(["word"] * 70)}]  # 74 tokens by the engine's count
    with pytest.raises(openai.BadRequestError) as info:
        live.client(key).chat.completions.create(model=TINY, messages=words)  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded" and "74 tokens" in info.value.message
    # A prompt that fits (by the engine's count, not by the bound) is served.
    few = [{"role": "user", "content": " ".join(["word"] * 20)}]  # bound 64 + 16 + 99 + 4 > 64; count 24
    answer = live.client(key).chat.completions.create(model=TINY, messages=few)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.prompt_tokens == 24
    assert fake_upstream.stats()["requests"] == requests + 1  # only the one that fits went upstream
    assert fake_upstream.stats()["last_body"]["max_tokens"] == 64 - 24  # type: ignore[index]
    assert [row[2] for row in history(live, name)] == ["ok"]


def test_an_engine_without_tokenize_is_learned_once_and_the_bound_decides(
    no_tokenize: tuple[LiveGateway, FakeUpstream],
) -> None:
    gateway, upstream = no_tokenize
    name, key = gateway.new_account()
    gateway.set_quota(name, key, LLAMA, "api", 100)
    messages = [{"role": "user", "content": "hello there"}]
    for _ in range(3):  # the bound (95 + 10) does not fit and nothing can count: refused, safely
        with pytest.raises(openai.RateLimitError):
            gateway.client(key).chat.completions.create(model=LLAMA, messages=messages, max_tokens=10)  # type: ignore[arg-type]
    assert upstream.stats()["tokenize_calls"] == 1  # the 404 was learned
    completion = gateway.client(key).chat.completions.create(model=LLAMA, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    assert completion.usage is not None and gateway.window(key, LLAMA)["used"] == completion.usage.total_tokens


# ---------------------------------------------------------------- 4. time limits that fit streams


def test_a_stalled_stream_ends_within_the_idle_limit_and_charges_what_was_delivered(live: LiveGateway) -> None:
    name, key = live.new_account()
    body = {"model": LLAMA, "messages": HI, "stream": True, "max_tokens": 17, "mock": {"stall_after": 3}}
    started = time.monotonic()
    with httpx.stream(
        "POST", live.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as response:
        events = sse_events(response)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 6.0  # MESHGATE_STREAM_IDLE_TIMEOUT=1; without it, the client gives up at 10 s
    content = [e for e in events if "choices" in e and e["choices"] and e["choices"][0]["delta"].get("content")]  # type: ignore[index, union-attr]
    assert len(content) == 3
    error = events[-1]["error"]
    assert error["code"] == "upstream_timeout" and error["type"] == "upstream_error"  # type: ignore[index]
    assert history(live, name) == [(HI_TOKENS, 3, "upstream_error")]
    assert live.window(key, LLAMA)["reserved"] == 0


# ---------------------------------------------------------------- 5. scoped keys


def scoped_key(gateway: LiveGateway, account: str, *args: str) -> str:
    return gateway.cli("keys", "create", "--account", account, *args).stdout.strip().splitlines()[-1]


def test_a_key_outside_its_models_gets_403_and_sees_only_its_models(live: LiveGateway) -> None:
    name, _ = live.new_account()
    key = scoped_key(live, name, "--models", LLAMA)
    client = live.client(key)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="other/Model", messages=HI, max_tokens=3)  # type: ignore[arg-type]
    assert info.value.status_code == 403 and LLAMA in info.value.message
    assert [m.id for m in client.models.list()] == [LLAMA]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other/Model")
    assert client.chat.completions.create(model=LLAMA, messages=HI, max_tokens=3).usage.total_tokens == HI_TOKENS + 3  # type: ignore[arg-type, union-attr]
    usage = live.usage(key)
    assert [row["model"] for row in usage["data"]] == [LLAMA]  # type: ignore[attr-defined]
    assert usage["key"]["models"] == [LLAMA] and usage["key"]["budget"] is None  # type: ignore[index]


@pytest.mark.parametrize("binding", ["budget", "account"])
def test_a_scoped_key_under_50_way_concurrency_overspends_neither_budget_nor_account(
    live: LiveGateway, binding: str
) -> None:
    name, _ = live.new_account()
    budget, account_quota = (300, 100_000) if binding == "budget" else (100_000, 300)
    key = scoped_key(live, name, "--models", LLAMA, "--budget", str(budget), "--cycle", "daily")
    live.set_quota(name, key, LLAMA, "api", account_quota)

    async def one(client: openai.AsyncOpenAI) -> int | str:
        try:
            answer = await client.chat.completions.create(
                model=LLAMA, messages=HI, max_tokens=17, extra_body={"mock": {"delay_ms": 5}}
            )
        except openai.RateLimitError as exc:
            return exc.message
        assert answer.usage is not None
        return answer.usage.total_tokens

    async def run() -> list[int | str]:
        async with openai.AsyncOpenAI(api_key=key, base_url=live.base_url + "/", max_retries=0) as client:
            return await asyncio.gather(*(one(client) for _ in range(50)))

    results = asyncio.run(run())
    charged = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, str)]
    assert charged and refused and all(r == HI_TOKENS + 17 for r in charged)
    assert sum(charged) <= 300
    word = "budget" if binding == "budget" else "daily token quota"
    assert all(word in message for message in refused)
    usage = live.usage(key)
    window = live.window(key, LLAMA)
    assert window["used"] == sum(charged) and window["reserved"] == 0
    assert usage["key"]["budget"]["used"] == sum(charged) and usage["key"]["budget"]["reserved"] == 0  # type: ignore[index]
    assert usage["key"]["budget"]["limit"] == budget  # type: ignore[index]
    assert sum(p + c for p, c, _ in history(live, name)) == sum(charged)


# ---------------------------------------------------------------- counting costs nothing before the quota says yes


def test_a_huge_prompt_is_refused_without_asking_the_engine_to_count(
    live: LiveGateway, fake_upstream: FakeUpstream
) -> None:
    name, key = live.new_account()
    stats = fake_upstream.stats()
    huge = [{"role": "user", "content": "word " * (7 * 1024 * 1024 // 5)}]  # 7 MiB
    with pytest.raises(openai.BadRequestError) as context:  # 7 MiB / 32 bytes per token > 128k surely
        live.client(key).chat.completions.create(model=LLAMA, messages=huge, max_tokens=5)  # type: ignore[arg-type]
    assert context.value.code == "context_length_exceeded"
    live.set_quota(name, key, LLAMA, "api", 100)
    big = [{"role": "user", "content": "word " * 20_000}]  # 100 kB: at least 3,125 tokens > 100
    with pytest.raises(openai.RateLimitError):
        live.client(key).chat.completions.create(model=LLAMA, messages=big, max_tokens=5)  # type: ignore[arg-type]
    live.set_quota(name, key, LLAMA, "api", 0)
    with pytest.raises(openai.RateLimitError):
        live.client(key).chat.completions.create(model=LLAMA, messages=big, max_tokens=5)  # type: ignore[arg-type]
    after = fake_upstream.stats()
    assert (after["tokenize_calls"], after["requests"]) == (stats["tokenize_calls"], stats["requests"])


def test_an_embedding_input_surely_over_the_context_is_refused_up_front(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    requests = fake_upstream.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:  # 3 MiB for a 4096-token model
        gateway.client(account[1]).embeddings.create(
            model="BAAI/bge-multilingual-gemma2", input=["ok", "x" * (3 << 20)]
        )
    assert info.value.code == "context_length_exceeded" and "input[1]" in info.value.message
    assert fake_upstream.stats()["requests"] == requests
