"""The limits checked before any work: each refused with a 400 naming its parameter."""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.protocol.errors import ApiError
from meshgate.protocol.requests import (
    MAX_CONTENT_PARTS,
    MAX_EMBEDDING_INPUTS,
    MAX_INT32,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOOLS,
    parse_chat,
    parse_embeddings,
)

HI = {"role": "user", "content": "hi"}
TEXT = {"type": "text", "text": "hi"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [HI], **fields}


# (body, the param named) for bodies the gateway refuses
CHAT_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"model": "m", "messages": [HI] * (MAX_MESSAGES + 1)}, "messages"),
    (chat(messages=[{"role": "user", "content": [TEXT] * (MAX_CONTENT_PARTS + 1)}]), "messages[0].content"),
    (chat(messages=[HI, {"role": "user", "content": ["hi"]}]), "messages[1].content[0]"),
    (chat(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content[0]"),
    (chat(messages=[{"role": "user", "content": [{"type": 1}]}]), "messages[0].content[0]"),
    (chat(messages=[{"role": {}, "content": None}]), "messages[0].role"),  # was a 500: unhashable in a set
    (chat(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role"),
    (chat(stop=["x"] * (MAX_STOP + 1)), "stop"),
    (chat(logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}), "logit_bias"),
    (chat(logit_bias={"hello": 1}), "logit_bias"),
    (chat(logit_bias={"²": 1}), "logit_bias"),  # a digit to str.isdigit, not a token id
    (chat(logit_bias={"5": 101}), "logit_bias"),
    (chat(logit_bias={"5": True}), "logit_bias"),
    (chat(logit_bias=[1]), "logit_bias"),
    (chat(tools=[{"type": "function"}] * (MAX_TOOLS + 1)), "tools"),
    (chat(tools=["f"]), "tools"),
    (chat(functions=[{"name": "f"}] * (MAX_TOOLS + 1)), "functions"),
    (chat(n=129), "n"),
    (chat(max_tokens=MAX_INT32 + 1), "max_tokens"),  # llama.cpp reads an int32: larger ones wrap
    (chat(max_completion_tokens=MAX_INT32 + 1), "max_completion_tokens"),
    (chat(seed=2**63), "seed"),
    (chat(seed=1.5), "seed"),
    (chat(seed=-(2**63) - 1.0), "seed"),  # orjson reads -2**63 - 1 as this float: it must not round into range
    (chat(prompt_logprobs=-1), "prompt_logprobs"),  # vLLM: the whole vocabulary for every prompt token
    (chat(prompt_logprobs=21), "prompt_logprobs"),
    (chat(top_logprobs=21), "top_logprobs"),
    (chat(parallel_tool_calls="yes"), "parallel_tool_calls"),
    (chat(tool_choice=1), "tool_choice"),
    (chat(response_format={"json": True}), "response_format"),
    (chat(response_format="json"), "response_format"),
    (chat(chat_template_kwargs=["x"]), "chat_template_kwargs"),
]


@pytest.mark.parametrize(("body", "param"), CHAT_REFUSALS)
def test_chat_limits(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat(body)
    assert info.value.status == 400 and info.value.param == param


def test_the_limits_themselves_are_accepted() -> None:
    parts = [TEXT] * MAX_CONTENT_PARTS
    body = chat(
        messages=[{"role": "user", "content": parts}] + [HI] * (MAX_MESSAGES - 1),
        stop=["x"] * MAX_STOP,
        logit_bias={str(i): -100 for i in range(MAX_LOGIT_BIAS)},
        tools=[{"type": "function", "function": {"name": "f"}}] * MAX_TOOLS,
        n=128,
        max_tokens=MAX_INT32,
        seed=-(2**63),
        prompt_logprobs=20,
    )
    assert parse_chat(body).max_tokens == MAX_INT32


EMBEDDING_REFUSALS: list[tuple[Any, str]] = [
    ([-1, 2], "input"),
    ([MAX_INT32 + 1], "input"),
    ([[1], [True]], "input"),
    (["x"] * (MAX_EMBEDDING_INPUTS + 1), "input"),
    ([[1]] * (MAX_EMBEDDING_INPUTS + 1), "input"),
]


@pytest.mark.parametrize(("value", "param"), EMBEDDING_REFUSALS)
def test_embeddings_limits(value: Any, param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_embeddings({"model": "e", "input": value})
    assert info.value.status == 400 and info.value.param == param


def test_embeddings_user_and_dimensions() -> None:
    for fields, param in (({"user": 5}, "user"), ({"dimensions": MAX_INT32 + 1}, "dimensions")):
        with pytest.raises(ApiError) as info:
            parse_embeddings({"model": "e", "input": "x", **fields})
        assert info.value.param == param
    assert parse_embeddings({"model": "e", "input": [0, MAX_INT32]}).inputs == [[0, MAX_INT32]]


def test_integers_may_be_written_as_integral_floats_and_are_sent_on_as_ints() -> None:
    # JSON has one number type and JSON Schema counts 2.0 as an integer (the fuzz tests sent 77585.0)
    request = parse_chat(chat(max_tokens=5.0, n=2.0, seed=-3.0))
    assert request.max_tokens == 5 and request.n == 2
    assert [type(request.body[name]) for name in ("max_tokens", "n", "seed")] == [int, int, int]
    assert parse_embeddings({"model": "e", "input": [1.0, 2], "dimensions": 8.0}).body == {
        "model": "e",
        "input": [1, 2],
        "dimensions": 8,
    }
    assert parse_embeddings({"model": "e", "input": [[1.0], [2]]}).inputs == [[1], [2]]
    for value in ([1.5], [[2.5]], [float(MAX_INT32 + 1)]):
        with pytest.raises(ApiError):
            parse_embeddings({"model": "e", "input": value})
    with pytest.raises(ApiError):
        parse_chat(chat(max_tokens=5.5))
