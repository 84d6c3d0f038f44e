"""Reasoning models through the openai SDK: one shape for every engine's spelling, switchable, charged exactly."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.features.conftest import ALWAYS, REASONER, THINK, TOOLS

HI = [{"role": "user", "content": "Why is the sky blue?"}]
THOUGHT = "Rayleigh scattering favours short wavelengths"  # 5 words: 5 tokens in the fake


def _mock(field: str, **more: Any) -> dict[str, Any]:
    return {"mock": {"reasoning": THOUGHT, "reasoning_field": field, **more}}


def _reasoning(obj: Any) -> tuple[Any, Any]:
    extra = obj.model_extra or {}
    return extra.get("reasoning_content"), extra.get("reasoning")


ENGINES = [(REASONER, "reasoning", 22), (REASONER, "reasoning_content", 22), (THINK, "think", 24)]  # 5 + 17 (+ 2 tags)


@pytest.mark.parametrize(("model", "field", "tokens"), ENGINES)
def test_answers_carry_both_names_whatever_the_engine_sends(
    features: LiveGateway, account: tuple[str, str], model: str, field: str, tokens: int
) -> None:
    name, key = account
    completion = features.client(key).chat.completions.create(
        model=model, messages=HI, max_tokens=40, extra_body=_mock(field)
    )
    message = completion.choices[0].message
    assert _reasoning(message) == (THOUGHT, THOUGHT)
    assert message.content == "This is a test of the meshgate gateway , counting one token per word until the end"
    assert "<think>" not in (message.content or "")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == tokens  # reasoning tokens are completion tokens
    assert features.settled(name, 1) == [(usage.prompt_tokens, usage.completion_tokens, "ok")]


@pytest.mark.parametrize(("model", "field", "tokens"), ENGINES)
def test_stream_deltas_carry_both_names_and_tags_are_split_across_events(
    features: LiveGateway, account: tuple[str, str], model: str, field: str, tokens: int
) -> None:
    name, key = account
    stream = features.client(key).chat.completions.create(
        model=model,
        messages=HI,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=_mock(field),
    )
    reasoning = content = ""
    for chunk in stream:
        for choice in chunk.choices:
            first, second = _reasoning(choice.delta)
            assert first == second
            reasoning += first or ""
            content += choice.delta.content or ""
        last = chunk
    assert reasoning == THOUGHT
    assert content == "This is a test of the meshgate gateway , counting one token per word until the end"
    assert last.usage is not None and last.usage.completion_tokens == tokens
    assert features.settled(name, 1) == [(last.usage.prompt_tokens, tokens, "ok")]


def test_reasoning_content_false_strips_it_and_still_charges_it(
    features: LiveGateway, account: tuple[str, str]
) -> None:
    name, key = account
    client = features.client(key)
    completion = client.chat.completions.create(
        model=THINK, messages=HI, max_tokens=40, extra_body={**_mock("think"), "reasoning_content": False}
    )
    message = completion.choices[0].message
    assert _reasoning(message) == (None, None) and message.content and "<think>" not in message.content
    events = list(
        client.chat.completions.create(
            model=REASONER,
            messages=HI,
            max_tokens=40,
            stream=True,
            extra_body={**_mock("reasoning"), "reasoning_content": False},
        )
    )
    assert all(_reasoning(c.choices[0].delta) == (None, None) for c in events if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in events if c.choices).startswith("This is a test")
    # Generated, not shown, charged: 5 reasoning (+ 2 tags) + 17 answer tokens.
    assert [c for _, c, _ in features.settled(name, 2)] == [24, 22]


def test_reasoning_tokens_are_reported_where_the_engine_counts_them(
    features: LiveGateway, account: tuple[str, str]
) -> None:
    _, key = account
    completion = features.client(key).chat.completions.create(
        model=REASONER, messages=HI, max_tokens=40, extra_body=_mock("reasoning", reasoning_tokens=True)
    )
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 5


def test_effort_is_passed_on_as_reasoning_effort(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    _, key = account
    client = features.client(key)
    client.chat.completions.create(model=ALWAYS, messages=HI, max_tokens=5, extra_body={"reasoning": {"effort": "low"}})
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert sent["reasoning_effort"] == "low" and "reasoning" not in sent and "reasoning_content" not in sent
    client.chat.completions.create(model=REASONER, messages=HI, max_tokens=5, reasoning_effort="none")
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert sent["reasoning_effort"] == "none" and sent["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        (ALWAYS, {"reasoning": {"effort": "none"}}, "reasoning.effort"),
        (ALWAYS, {"reasoning_effort": "none"}, "reasoning_effort"),
        (TOOLS, {"reasoning_effort": "high"}, "reasoning_effort"),  # not a reasoning model
        (REASONER, {"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        (REASONER, {"reasoning_content": "yes"}, "reasoning_content"),
    ],
)
def test_bad_efforts_are_400_before_any_work(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str], model: str, extra: Any, param: str
) -> None:
    name, key = account
    before = fake_upstream.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(model=model, messages=HI, max_tokens=5, extra_body=extra)
    assert info.value.param == param
    assert fake_upstream.stats()["requests"] == before
    assert features.window(key, model)["reserved"] == 0 and features.settled(name, 0, timeout=0.2) == []


def test_reasoning_sent_back_reaches_the_engine_under_both_names(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    _, key = account
    history = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "two and two"},
        {"role": "assistant", "content": "4", "reasoning_content": "still four"},
        {"role": "user", "content": "and 3+3?"},
    ]
    features.client(key).chat.completions.create(model=REASONER, messages=history, max_tokens=3)  # type: ignore[arg-type]
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert sent["messages"][1]["reasoning_content"] == sent["messages"][1]["reasoning"] == "two and two"
    assert sent["messages"][2]["reasoning_content"] == sent["messages"][2]["reasoning"] == "still four"


def test_reasoning_content_true_is_accepted_for_any_model(features: LiveGateway, account: tuple[str, str]) -> None:
    """The reference's own example sends it to Llama 3.3."""
    _, key = account
    completion = features.client(key).chat.completions.create(
        model=TOOLS, messages=HI, max_tokens=3, extra_body={"reasoning_content": True}
    )
    assert completion.choices[0].message.content == "This is a"
