"""Legacy completions (`POST /completions`) end to end: the `openai` SDK, a live gateway, the fake engine.

Admitted, served and settled as chat is: charged to the `api` bucket exactly what the engine reported.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.fakes.upstream import REPLY, completion_prompt_tokens

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
PROMPT = "Say this is a test"


def text_of(tokens: int) -> str:
    return "".join(" " + word for word in REPLY[:tokens])


def assert_charged(gateway: LiveGateway, key: str, tokens: int) -> None:
    window = gateway.window(key, LLAMA, "api")
    assert (window["used"], window["reserved"]) == (tokens, 0), window


def test_a_completion_with_the_sdk_is_charged_exactly_in_the_api_bucket(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    client = gateway.client(account[1])
    raw = client.completions.with_raw_response.create(model=LLAMA, prompt=PROMPT, max_tokens=5, temperature=0.5)
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.model == LLAMA
    assert completion.choices[0].text == text_of(5) and completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    prompt = completion_prompt_tokens(PROMPT)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, 5)
    assert raw.headers["x-ratelimit-remaining-tokens"]
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert (sent["model"], sent["max_tokens"], sent["prompt"], sent["temperature"]) == ("served-llama", 5, PROMPT, 0.5)
    assert_charged(gateway, account[1], prompt + 5)
    assert gateway.window(account[1], LLAMA, "chat")["used"] == 0  # the API's bucket, not the web chat's


def test_max_tokens_defaults_to_16_as_openai(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    completion = gateway.client(account[1]).completions.create(model=LLAMA, prompt=PROMPT)
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["max_tokens"] == 16
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    assert_charged(gateway, account[1], completion_prompt_tokens(PROMPT) + 16)


def test_list_prompts_and_n_each_get_their_choices_and_are_charged_in_sum(
    gateway: LiveGateway, account: tuple[str, str]
) -> None:
    prompts = ["one two three", "four five"]
    completion = gateway.client(account[1]).completions.create(model=LLAMA, prompt=prompts, n=2, max_tokens=3)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert all(c.text == text_of(3) for c in completion.choices)
    prompt = sum(completion_prompt_tokens(p) for p in prompts)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, 12)
    assert_charged(gateway, account[1], prompt + 12)


@pytest.mark.parametrize("prompt", [[11, 12, 13], [[11, 12], [13]]])
def test_token_prompts(gateway: LiveGateway, account: tuple[str, str], prompt: Any) -> None:
    completion = gateway.client(account[1]).completions.create(model=LLAMA, prompt=prompt, max_tokens=2)
    assert completion.usage is not None and completion.usage.prompt_tokens == 3
    assert_charged(gateway, account[1], 3 + 2 * (1 if isinstance(prompt[0], int) else 2))


def test_echo_returns_the_prompt_before_the_text(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    completion = client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=2, echo=True, logprobs=2)
    assert completion.choices[0].text == PROMPT + text_of(2)
    assert completion.choices[0].logprobs is not None and completion.choices[0].logprobs.tokens == REPLY[:2]
    # max_tokens 0 scores the prompt (echo + logprobs): charged the prompt, no completion
    scored = client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=0, echo=True)
    assert scored.choices[0].text == PROMPT
    prompt = completion_prompt_tokens(PROMPT)
    assert_charged(gateway, account[1], prompt + 2 + prompt)


def test_streaming_with_the_sdk(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    chunks = list(
        client.completions.create(
            model=LLAMA, prompt=PROMPT, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.model == LLAMA and c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text_of(4)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    prompt = completion_prompt_tokens(PROMPT)
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, 4)
    # Without include_usage: no usage in any event (the gateway asked the engine for it, not the client).
    plain = list(client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=4, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)
    assert_charged(gateway, account[1], 2 * (prompt + 4))


def test_streaming_lists_n_and_echo(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    stream = client.completions.create(
        model=LLAMA,
        prompt=["a b", "c"],
        n=2,
        max_tokens=2,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "a b" + text_of(2), 1: "a b" + text_of(2), 2: "c" + text_of(2), 3: "c" + text_of(2)}
    prompt = completion_prompt_tokens("a b") + completion_prompt_tokens("c")
    # echo with max_tokens 0, streamed: the echoed prompt is no completion token
    scored = list(client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=0, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in scored if c.choices) == PROMPT
    assert_charged(gateway, account[1], prompt + 8 + completion_prompt_tokens(PROMPT))


async def test_async_client(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = openai.AsyncOpenAI(api_key=account[1], base_url=gateway.base_url + "/", max_retries=0)
    completion = await client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=3)
    assert completion.choices[0].text == text_of(3)
    stream = await client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=3, stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == text_of(3)
    await client.close()


def test_suffix_is_refused_for_an_engine_without_it(gateway: LiveGateway, account: tuple[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client(account[1]).completions.create(model=LLAMA, prompt="def f(", suffix="return x", max_tokens=3)
    body: Any = info.value.body
    assert body["param"] == "suffix" and body["code"] == "unsupported_by_model"
    assert_charged(gateway, account[1], 0)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": LLAMA}, "prompt", None),
        ({"model": LLAMA, "prompt": []}, "prompt", None),
        ({"model": LLAMA, "prompt": ""}, "prompt", None),
        ({"model": LLAMA, "prompt": [1, -2]}, "prompt", None),
        ({"model": LLAMA, "prompt": {"text": "x"}}, "prompt", None),
        ({"model": LLAMA, "prompt": "x", "logprobs": 21}, "logprobs", None),
        ({"model": LLAMA, "prompt": "x", "logprobs": True}, "logprobs", None),
        ({"model": LLAMA, "prompt": "x", "max_tokens": 0}, "max_tokens", None),
        ({"model": LLAMA, "prompt": "x", "echo": "yes"}, "echo", None),
        ({"model": LLAMA, "prompt": "x", "n": 0}, "n", None),
        ({"model": LLAMA, "prompt": "x", "best_of": 3}, "best_of", "unsupported_parameter"),
        ({"model": LLAMA, "prompt": "x", "messages": []}, "messages", "unsupported_parameter"),
        ({"model": LLAMA, "prompt": "x", "tools": []}, "tools", "unknown_parameter"),
        ({"model": LLAMA, "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", None),
        ({"model": LLAMA, "prompt": "x", "max_tokens": 128000}, "max_tokens", "context_length_exceeded"),
        ({"model": LLAMA, "prompt": ["x", "y" * 5_000_000]}, "prompt", "context_length_exceeded"),
        ({"model": "BAAI/bge-multilingual-gemma2", "prompt": "x"}, "model", "wrong_model_kind"),
    ],
)
def test_bad_inputs_are_the_openai_envelope_and_cost_nothing(
    gateway: LiveGateway, account: tuple[str, str], body: dict[str, Any], param: str, code: str | None
) -> None:
    response = httpx.post(
        gateway.base_url + "/completions", json=body, headers={"Authorization": f"Bearer {account[1]}"}, timeout=30
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code), error
    assert_charged(gateway, account[1], 0)


def test_quota_refusal_and_the_v1_alias(gateway: LiveGateway, account: tuple[str, str]) -> None:
    name, key = account
    v1 = openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{gateway.port}/v1/", max_retries=0)
    assert v1.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=1).choices[0].text == text_of(1)
    used = completion_prompt_tokens(PROMPT) + 1
    gateway.set_quota(name, key, LLAMA, "api", used + 10)
    with pytest.raises(openai.RateLimitError) as info:
        v1.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=50)
    assert info.value.code == "insufficient_quota"
    assert_charged(gateway, key, used)


def test_a_failing_engine_charges_nothing(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=3, extra_body={"mock": {"status": 500}})
    assert info.value.status_code == 502
    assert_charged(gateway, account[1], 0)
