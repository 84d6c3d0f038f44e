"""Logprobs: real ones from llama.cpp, in streams too, limited as vLLM limits them."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import LiveGateway
from tests.features.conftest import PLAIN, SMOL, TOOLS

HI = [{"role": "user", "content": "Say hello."}]


def test_real_logprobs_from_the_local_worker(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol
    completion = live.client(key).chat.completions.create(
        model=SMOL, messages=HI, max_tokens=4, logprobs=True, top_logprobs=3, temperature=0
    )
    content = completion.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(token.token for token in content) == completion.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob


def test_logprobs_in_a_stream_from_the_local_worker(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol
    stream = live.client(key).chat.completions.create(
        model=SMOL, messages=HI, max_tokens=4, logprobs=True, top_logprobs=2, stream=True, temperature=0
    )
    tokens = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert len(tokens) == 4 and all(len(t.top_logprobs) == 2 for t in tokens)


def test_logprobs_pass_through_from_vllm_in_streams(features: LiveGateway, account: tuple[str, str]) -> None:
    _, key = account
    client = features.client(key)
    stream = client.chat.completions.create(
        model=TOOLS, messages=HI, max_tokens=3, logprobs=True, top_logprobs=20, stream=True
    )
    tokens = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert [t.token for t in tokens] == ["This", "is", "a"] and all(len(t.top_logprobs) == 20 for t in tokens)


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        (TOOLS, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),  # vLLM's default max_logprobs is 20
        (TOOLS, {"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        (TOOLS, {"logprobs": 1}, "logprobs"),
        (PLAIN, {"logprobs": True}, "logprobs"),  # the catalog says the model has none
    ],
)
def test_logprobs_limits(features: LiveGateway, account: tuple[str, str], model: str, extra: Any, param: str) -> None:
    _, key = account
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(model=model, messages=HI, max_tokens=3, extra_body=extra)  # type: ignore[arg-type]
    assert info.value.param == param
