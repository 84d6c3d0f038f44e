"""Exact prompt counts from the engine, learned per replica; None (the byte bound) whenever it cannot count."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from meshgate.catalog.spec import UpstreamSpec
from meshgate.workers.http_client import HttpClient, Origin, UpstreamResponse
from meshgate.workers.pool import Replica
from meshgate.workers.prompt_count import (
    Count,
    LlamaCppPromptCounter,
    TokenizeCounter,
    counter_for,
)
from tests.conftest import FakeUpstream, free_port, start_fake_upstream, stop

MODEL = "served-model"
BODY: dict[str, Any] = {
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how many tokens is this"}]
}
BODY_TOKENS = (2 + 4) + (5 + 4)  # the fake's rule: words + 4 per message


class CountingClient(HttpClient):
    """An HttpClient that counts the requests it sends: proves that a call made no I/O."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def request(self, *args: Any, **kwargs: Any) -> UpstreamResponse:
        self.sent += 1
        return await super().request(*args, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[CountingClient]:
    http = CountingClient()
    yield http
    await http.aclose()


@pytest.fixture(scope="module")
def no_tokenize_upstream() -> Iterator[FakeUpstream]:
    upstream = start_fake_upstream(None, "--no-tokenize")
    yield upstream
    stop(upstream.process)


@pytest.fixture(scope="module")
def small_context_upstream() -> Iterator[FakeUpstream]:
    upstream = start_fake_upstream(None, "--max-model-len", "4096")
    yield upstream
    stop(upstream.process)


def replica_of(upstream: FakeUpstream) -> Replica:
    return Replica(UpstreamSpec(url=upstream.url, model=MODEL))


def tokenize_calls(upstream: FakeUpstream) -> int:
    return upstream.stats()["tokenize_calls"]  # type: ignore[return-value]


def with_message_mock(mock: dict[str, Any]) -> dict[str, Any]:
    """BODY whose last message steers the fake's /tokenize (the counter forwards only the messages)."""
    *rest, last = BODY["messages"]
    return {"messages": [*rest, {**last, "mock": mock}]}


# -- vLLM-shaped engines: exact counts


async def test_chat_count_equals_the_usage_the_engine_reports(
    fake_upstream: FakeUpstream, client: CountingClient
) -> None:
    counter = TokenizeCounter(client, replica_of(fake_upstream))
    assert counter.supported is None
    counted = await counter.count_chat({**BODY, "temperature": 0.2, "mock": {"no_usage": False}})
    usage = httpx.post(f"{fake_upstream.url}/chat/completions", json={"model": MODEL, **BODY}).json()["usage"]
    assert counted == Count(usage["prompt_tokens"], 131072)
    assert counted.tokens == BODY_TOKENS
    assert counter.supported is True
    # At the root, with the served name; sampling fields and unknown fields stay out.
    assert fake_upstream.stats()["last_tokenize_body"] == {
        "model": MODEL,
        "messages": BODY["messages"],
        "add_generation_prompt": True,
    }


async def test_template_fields_and_tools_go_to_the_engine(fake_upstream: FakeUpstream, client: CountingClient) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {
        **BODY,
        "tools": tools,
        "add_generation_prompt": False,
        "continue_final_message": True,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert await TokenizeCounter(client, replica_of(fake_upstream)).count_chat(body) == Count(BODY_TOKENS, 131072)
    assert fake_upstream.stats()["last_tokenize_body"] == {
        "model": MODEL,
        "messages": BODY["messages"],
        "add_generation_prompt": False,
        "tools": tools,
        "continue_final_message": True,
        "chat_template_kwargs": {"enable_thinking": False},
    }


async def test_text_counts_equal_the_embeddings_usage(fake_upstream: FakeUpstream, client: CountingClient) -> None:
    texts = ["one two three", "four", "five six", "seven", "eight nine ten eleven", ""]
    before = tokenize_calls(fake_upstream)
    counted = await TokenizeCounter(client, replica_of(fake_upstream)).count_texts(texts)
    usage = [
        httpx.post(f"{fake_upstream.url}/embeddings", json={"model": MODEL, "input": text}).json()["usage"]
        for text in texts
    ]
    assert counted == [u["prompt_tokens"] for u in usage] == [5, 3, 4, 3, 6, 2]
    assert tokenize_calls(fake_upstream) - before == len(texts)  # one call per text
    assert fake_upstream.stats()["last_tokenize_body"]["model"] == MODEL  # type: ignore[index]
    assert await TokenizeCounter(client, replica_of(fake_upstream)).count_texts([]) == []


async def test_an_answer_beyond_the_cap_is_counted_from_its_head(
    fake_upstream: FakeUpstream, client: CountingClient
) -> None:
    # 200k words: the token ids alone are ~1.4 MB, more than the default 1 MiB cap.
    body = {"messages": [{"role": "user", "content": "word " * 200_000}]}
    assert await TokenizeCounter(client, replica_of(fake_upstream)).count_chat(body) == Count(200_004, 131072)
    small_cap = TokenizeCounter(client, replica_of(fake_upstream), max_response_bytes=256)
    assert await small_cap.count_texts(["w " * 1000]) == [1002]


# -- learning per replica


async def test_an_engine_without_tokenize_is_asked_once_then_after_the_interval(
    no_tokenize_upstream: FakeUpstream, client: CountingClient
) -> None:
    clock = Clock()
    counter = TokenizeCounter(client, replica_of(no_tokenize_upstream), retry_after=600, clock=clock)
    before = tokenize_calls(no_tokenize_upstream)
    assert await counter.count_chat(BODY) is None
    assert tokenize_calls(no_tokenize_upstream) == before + 1
    assert counter.supported is False

    sent = client.sent
    assert await counter.count_chat(BODY) is None
    assert await counter.count_texts(["a b"]) is None
    clock.now += 599
    assert await counter.count_chat(BODY) is None
    assert client.sent == sent  # no I/O at all while it is known not to serve the route
    assert tokenize_calls(no_tokenize_upstream) == before + 1

    clock.now += 1
    assert await counter.count_texts(["a b"]) is None  # asked again: still 404
    assert tokenize_calls(no_tokenize_upstream) == before + 2
    assert await counter.count_chat(BODY) is None
    assert tokenize_calls(no_tokenize_upstream) == before + 2  # and learned again


async def test_a_refused_connection_is_learned_for_a_shorter_while(client: CountingClient) -> None:
    clock = Clock()
    replica = Replica(UpstreamSpec(url=f"http://127.0.0.1:{free_port()}/v1", model=MODEL))
    counter = TokenizeCounter(client, replica, connect_retry_after=30, clock=clock)
    assert await counter.count_chat(BODY) is None
    assert counter.supported is False
    assert await counter.count_chat(BODY) is None
    assert client.sent == 1
    clock.now += 30
    assert await counter.count_chat(BODY) is None
    assert client.sent == 2


async def test_a_stalled_tokenize_gives_none_within_the_timeout(
    fake_upstream: FakeUpstream, client: CountingClient
) -> None:
    counter = TokenizeCounter(client, replica_of(fake_upstream), timeout=0.3)
    started = time.monotonic()
    assert await counter.count_chat(with_message_mock({"hang": True})) is None
    assert 0.3 <= time.monotonic() - started < 3.0  # the fake hangs for good
    # A timeout says nothing about the route: the next request is counted.
    assert await counter.count_chat(BODY) == Count(BODY_TOKENS, 131072)
    assert counter.supported is True


async def test_errors_for_a_body_are_not_learned_but_a_run_of_them_is(
    fake_upstream: FakeUpstream, client: CountingClient
) -> None:
    counter = TokenizeCounter(client, replica_of(fake_upstream))
    for status in (400, 500, 503, 422):
        assert await counter.count_chat(with_message_mock({"status": status})) is None
        assert await counter.count_chat(BODY) == Count(BODY_TOKENS, 131072)  # asked, and counted
    # Three rejected chat bodies in a row: an engine that takes no chat shape there (SGLang's /tokenize).
    for _ in range(3):
        assert await counter.count_chat(with_message_mock({"status": 400})) is None
    sent = client.sent
    assert await counter.count_chat(BODY) is None
    assert client.sent == sent
    assert await counter.count_texts(["a b c"]) == [5]  # the prompt shape is still asked


async def test_max_model_len_below_the_catalog_is_warned_once(
    small_context_upstream: FakeUpstream, client: CountingClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.workers.prompt_count")
    counter = TokenizeCounter(client, replica_of(small_context_upstream), catalog_context=8192)
    assert await counter.count_chat(BODY) == Count(BODY_TOKENS, 4096)
    assert await counter.count_texts(["a", "b"]) == [3, 3]
    assert await counter.count_chat(BODY) == Count(BODY_TOKENS, 4096)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "4096" in warnings[0] and "8192" in warnings[0] and small_context_upstream.url in warnings[0]

    caplog.clear()
    fits = TokenizeCounter(client, replica_of(small_context_upstream), catalog_context=4096)
    assert await fits.count_chat(BODY) == Count(BODY_TOKENS, 4096)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


async def test_what_is_not_counted_costs_no_request(fake_upstream: FakeUpstream, client: CountingClient) -> None:
    replica = replica_of(fake_upstream)
    counter = TokenizeCounter(client, replica)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    assert (
        await counter.count_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]})
        is None
    )
    assert await counter.count_texts(["x"] * 257) is None
    replica.healthy = False
    assert await counter.count_chat(BODY) is None
    assert await counter.count_texts(["x"]) is None
    assert client.sent == 0
    replica.healthy = True
    assert await counter.count_chat(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    ) == Count(5, 131072)


# -- llama.cpp, and the factory


async def test_llama_cpp_counter_without_its_endpoints_gives_none(
    fake_upstream: FakeUpstream, client: CountingClient
) -> None:
    counter = LlamaCppPromptCounter(client, replica_of(fake_upstream))
    assert await counter.count_chat(BODY) is None  # the fake engine answers 404 to /apply-template
    assert await counter.count_chat(BODY) is None
    assert await counter.count_texts(["a b"]) is None  # and 400 to llama.cpp's `content` shape
    assert await counter.count_texts([]) == []


async def test_llama_cpp_counter_of_an_unreachable_or_unhealthy_engine_gives_none(client: CountingClient) -> None:
    replica = Replica(UpstreamSpec(url=f"http://127.0.0.1:{free_port()}/v1", model="m"))
    counter = LlamaCppPromptCounter(client, replica)
    assert await counter.count_chat(BODY) is None
    assert await counter.count_texts(["a"]) is None
    replica.healthy = False
    sent = client.sent
    assert await counter.count_chat(BODY) is None
    assert await counter.count_texts(["a"]) is None
    assert client.sent == sent


def test_counter_for_picks_the_engine_shape() -> None:
    client = HttpClient()
    replica = Replica(UpstreamSpec(url="http://10.0.0.5:8000/v1", model=MODEL))
    assert isinstance(counter_for(client, replica, "llama.cpp"), LlamaCppPromptCounter)
    assert counter_for(client, replica, "sentence-transformers") is None
    assert isinstance(counter_for(client, replica, None), TokenizeCounter)
    assert isinstance(counter_for(client, replica, "vllm", catalog_context=32768), TokenizeCounter)


def test_tokenize_is_at_the_root_beside_v1() -> None:
    from meshgate.workers.prompt_count import _root_of

    assert _root_of(Origin("h", 1, "/v1")) == Origin("h", 1, "")
    assert _root_of(Origin("h", 1, "/vllm/v1")) == Origin("h", 1, "/vllm")
    assert _root_of(Origin("h", 1, "")) == Origin("h", 1, "")


def test_answers_in_other_field_orders_are_parsed_whole() -> None:
    from meshgate.workers.prompt_count import _parse_count

    # SGLang: the ids first, and the tokenizer's "unset" sentinel (1e30) or -1 as max_model_len.
    assert _parse_count(b'{"tokens":[7,8,9],"count":3,"max_model_len":1000000000000000019884624838656}', True) == Count(
        3
    )
    assert _parse_count(b'{"tokens":[7,8,9],"count":3,"max_model_len":-1}', True) == Count(3)
    assert _parse_count(b'{"tokens":[7,8,9]}', True) == Count(3)  # llama.cpp-like: only the ids
    assert _parse_count(b'{"tokens":[7,8,9', False) is None  # cut by the cap, and no count up front
    assert _parse_count(b'{"count":-1,"tokens":[]}', True) is None
    assert _parse_count(b"not json", True) is None
