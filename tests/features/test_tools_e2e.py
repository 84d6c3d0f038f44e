"""Tool calling through the openai SDK: calls and streamed deltas relayed intact, refused where the model has none."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.features.conftest import PLAIN, SMOL, TOOLS

WEATHER: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CALLS = {"mock": {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}}


def test_a_tool_call_answer_and_the_round_trip(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    name, key = account
    client = features.client(key)
    completion = client.chat.completions.create(
        model=TOOLS, messages=ASK, tools=WEATHER, tool_choice="auto", parallel_tool_calls=False, extra_body=CALLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert sent["tools"] == WEATHER and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False
    # The result goes back as a `tool` message; the engine gets the whole conversation as sent.
    follow_up = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
    ]
    answer = client.chat.completions.create(model=TOOLS, messages=follow_up, tools=WEATHER, max_tokens=4)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "This is a test"
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["messages"][2]["tool_call_id"] == call.id
    assert features.settled(name, 2)[0][1] == completion.usage.completion_tokens  # type: ignore[union-attr]


def test_streamed_tool_call_deltas_are_relayed_intact(features: LiveGateway, account: tuple[str, str]) -> None:
    _, key = account
    client = features.client(key)
    # The SDK's streaming helper assembles the deltas into the final message.
    with client.chat.completions.stream(model=TOOLS, messages=ASK, tools=WEATHER, extra_body=CALLS) as stream:  # type: ignore[arg-type]
        deltas = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert [d.arguments_delta for d in deltas if d.arguments_delta] == [
        '{"city":',
        ' "Paris"}',
    ]  # as the engine sent them
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": WEATHER}, "tools"),
        ({"functions": [WEATHER[0]["function"]]}, "functions"),
    ],
)
def test_a_model_without_tools_is_refused_before_any_work(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str], extra: Any, param: str
) -> None:
    _, key = account
    before = fake_upstream.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(model=PLAIN, messages=ASK, extra_body=extra)  # type: ignore[arg-type]
    assert info.value.param == param and info.value.code == "tools_not_supported"
    assert PLAIN in info.value.message
    assert fake_upstream.stats()["requests"] == before
    assert features.window(key, PLAIN)["reserved"] == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "auto"}, "tool_choice"),  # no tools
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": WEATHER, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": WEATHER, "tool_choice": {"type": "function"}}, "tool_choice"),
    ],
)
def test_bad_tool_fields_are_400(features: LiveGateway, account: tuple[str, str], extra: Any, param: str) -> None:
    _, key = account
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(model=TOOLS, messages=ASK, extra_body=extra)  # type: ignore[arg-type]
    assert info.value.param == param


def test_an_engine_that_rejects_a_feature_is_an_openai_400(features: LiveGateway, account: tuple[str, str]) -> None:
    """vLLM started without --enable-auto-tool-choice refuses tool_choice auto: the client sees its message."""
    _, key = account
    message = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(
            model=TOOLS, messages=ASK, tools=WEATHER, extra_body={"mock": {"reject": message}}
        )
    assert info.value.body == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "upstream_rejected",
    }
    assert features.window(key, TOOLS)["reserved"] == 0
    assert features.window(key, TOOLS)["used"] == 0  # an engine's refusal costs nothing


def test_the_local_worker_takes_tools_through_its_template(smol: tuple[LiveGateway, str]) -> None:
    """SmolLM2 on llama.cpp: the tools reach the prompt (its template is swapped for one with a tool block),
    and a conversation with a tool call and its result is served; the call itself is the 135M model's to make."""
    live, key = smol
    client = live.client(key)
    plain = client.chat.completions.create(model=SMOL, messages=ASK, max_tokens=1)
    with_tools = client.chat.completions.create(model=SMOL, messages=ASK, tools=WEATHER, max_tokens=1)
    assert with_tools.usage is not None and plain.usage is not None
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 40  # the tool's JSON is in the prompt
    follow_up: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    ]
    answer = client.chat.completions.create(model=SMOL, messages=follow_up, tools=WEATHER, max_tokens=8)
    assert answer.choices[0].message.content is not None or answer.choices[0].message.tool_calls
    assert answer.usage is not None and answer.usage.prompt_tokens > with_tools.usage.prompt_tokens
