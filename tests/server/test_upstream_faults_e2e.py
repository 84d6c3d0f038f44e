"""A misbehaving engine gets no free tokens and cannot exhaust the gateway: it ignores max_tokens,
reports bad usage, packs many tokens per event, spells its JSON with spaces, sends huge answers or
events, or trickles bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from tests.conftest import FakeUpstream, LiveGateway, start_gateway, stop
from tests.fakes.upstream import prompt_tokens

MODEL = "faulty/Model"
HI = [{"role": "user", "content": "hi"}]
HI_TOKENS = prompt_tokens(HI)


@pytest.fixture(scope="module")
def live(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    catalog = f"""
[[models]]
id = "{MODEL}"
kind = "chat"
context_length = 32000
daily_quota = {{ api = 1000000 }}
[[models.upstreams]]
url = "{fake_upstream.url}"
model = "served-faulty"
"""
    env = {
        "MESHGATE_UPSTREAM_RESPONSE_TIMEOUT": "2",
        "MESHGATE_MAX_UPSTREAM_ANSWER_BYTES": str(1024 * 1024),
        "MESHGATE_MAX_EVENT_BYTES": str(256 * 1024),
    }
    gateway = start_gateway(tmp_path_factory.mktemp("faults"), catalog, env)
    yield gateway
    assert gateway.process is not None
    stop(gateway.process)


def settled(gateway: LiveGateway, account: str, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int, str]]:
    return gateway.settled(account, count, timeout)


def stream_events(gateway: LiveGateway, key: str, body: dict[str, object]) -> list[dict[str, object]]:
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json={"model": MODEL, "messages": HI, "stream": True, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_bytes())
    assert raw.endswith(b"\n\n")
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def content_of(events: list[dict[str, object]]) -> str:
    return "".join(
        str(choice["delta"].get("content") or "")  # type: ignore[index, union-attr]
        for e in events
        for choice in e.get("choices") or []  # type: ignore[attr-defined]
    )


# ---------------------------------------------------------------- never relay more than reserved


@pytest.mark.parametrize("running_usage", [True, False])
def test_a_stream_that_ignores_max_tokens_is_cut_at_the_reservation(
    live: LiveGateway, fake_upstream: FakeUpstream, running_usage: bool
) -> None:
    name, key = live.new_account()
    cancelled = fake_upstream.stats()["cancelled"]
    mock = {"ignore_max_tokens": 1000, "delay_ms": 1, "no_continuous": not running_usage}
    events = stream_events(live, key, {"max_tokens": 10, "stream_options": {"include_usage": True}, "mock": mock})
    assert len(content_of(events).split()) == 10
    finish = [c["finish_reason"] for e in events for c in e.get("choices") or [] if c["finish_reason"]]  # type: ignore[attr-defined, index]
    assert finish == ["length"]
    assert events[-1]["usage"]["completion_tokens"] == 10  # type: ignore[index]
    assert settled(live, name) == [(HI_TOKENS, 10, "cut_at_limit")]
    assert fake_upstream.stats()["cancelled"] == cancelled + 1  # the engine was stopped
    assert "streamed past the 10 completion tokens reserved" in (live.home / "serve.log").read_text()


def test_a_json_answer_over_the_reservation_is_charged_in_full_and_logged(live: LiveGateway) -> None:
    name, key = live.new_account()
    answer = live.client(key).chat.completions.create(
        model=MODEL, messages=HI, max_tokens=10, extra_body={"mock": {"ignore_max_tokens": 300}}
    )  # type: ignore[call-overload]
    assert answer.usage.completion_tokens == 300
    assert settled(live, name) == [(HI_TOKENS, 300, "ok")]
    assert "answered 305 tokens where" in (live.home / "serve.log").read_text()


@pytest.mark.parametrize("bad", [-5, 1.5, True, "12"])
def test_usage_that_is_not_a_count_is_not_believed(live: LiveGateway, bad: object) -> None:
    name, key = live.new_account()
    live.client(key).chat.completions.create(
        model=MODEL, messages=HI, max_tokens=10, extra_body={"mock": {"bad_usage": bad}}
    )  # type: ignore[call-overload]
    # charged as an engine that reports nothing: the whole reservation (the prompt's bound + 10)
    ((prompt, completion, outcome),) = settled(live, name)
    assert completion == 10 and prompt >= HI_TOKENS and outcome == "ok"


# ---------------------------------------------------------------- streams cut short: charged by content


@pytest.mark.parametrize("spaced", [False, True])
def test_a_stream_cut_by_the_client_is_charged_by_content_not_events(live: LiveGateway, spaced: bool) -> None:
    name, key = live.new_account()
    mock = {"ignore_max_tokens": 1000, "words_per_event": 100, "delay_ms": 200, "no_continuous": True, "spaced": spaced}

    async def read_three_then_leave() -> str:
        received = ""
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"model": MODEL, "messages": HI, "stream": True, "max_tokens": 2000, "mock": mock}
            headers = {"Authorization": f"Bearer {key}"}
            async with client.stream("POST", live.base_url + "/chat/completions", json=body, headers=headers) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        received += content_of([orjson.loads(line[6:])])
                    if len(received.split()) >= 300:
                        return received
        return received

    received = asyncio.run(read_three_then_leave())
    assert len(received.split()) == 300
    ((prompt, completion, outcome),) = settled(live, name)
    # 300 tokens by the engine's own count of the delivered text, not 3 (events)
    assert (prompt, completion, outcome) == (HI_TOKENS, 300, "client_disconnect")


# ---------------------------------------------------------------- bounded answers and time


def test_a_huge_json_answer_is_refused_with_502_and_costs_nothing(live: LiveGateway) -> None:
    name, key = live.new_account()
    with pytest.raises(openai.APIStatusError) as info:
        live.client(key).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=5, extra_body={"mock": {"huge_json_mb": 8}}
        )  # type: ignore[call-overload]
    assert info.value.status_code == 502 and "size limit" in info.value.message
    assert settled(live, name, timeout=1) == []
    assert live.window(key, MODEL)["reserved"] == 0


def test_a_huge_event_ends_the_stream_with_an_error_event(live: LiveGateway) -> None:
    name, key = live.new_account()
    started = time.monotonic()
    events = stream_events(live, key, {"max_tokens": 5, "mock": {"huge_event_mb": 20}})
    assert time.monotonic() - started < 5
    assert "larger than" in events[-1]["error"]["message"]  # type: ignore[index]
    assert settled(live, name)[0][2] == "upstream_error"


def test_a_trickling_answer_hits_the_total_time_limit(live: LiveGateway, fake_upstream: FakeUpstream) -> None:
    _, key = live.new_account()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        live.client(key, timeout=20).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=5, extra_body={"mock": {"trickle_ms": 100}}
        )  # type: ignore[call-overload]
    assert info.value.status_code == 504
    assert 1.9 < time.monotonic() - started < 8  # MESHGATE_UPSTREAM_RESPONSE_TIMEOUT=2, in all; the client waits 20
