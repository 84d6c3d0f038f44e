"""Structured output: the SDK's `parse` with a Pydantic model, enforced by llama.cpp's grammar on the real 135M model."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import FakeUpstream, LiveGateway
from tests.features.conftest import PLAIN, SMOL, TOOLS

ASK = [{"role": "user", "content": "Invent a person: a name and an age."}]


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_model_on_the_local_worker(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol
    completion = live.client(key).chat.completions.parse(
        model=SMOL, messages=ASK, response_format=Person, max_tokens=60, temperature=0
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and person.name


def test_a_json_schema_and_json_object_are_valid_json_from_the_135m_model(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol
    client = live.client(key)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Weather report for Paris."}],
        response_format={"type": "json_schema", "json_schema": {"name": "report", "schema": schema, "strict": True}},
        max_tokens=60,
        temperature=0,
    )
    report = json.loads(completion.choices[0].message.content or "")
    assert set(report) == {"city", "sunny"} and isinstance(report["sunny"], bool)
    # vLLM's guided_json becomes llama.cpp's json_schema on the local worker
    guided = client.chat.completions.create(
        model=SMOL, messages=ASK, max_tokens=60, temperature=0, extra_body={"guided_json": Person.model_json_schema()}
    )
    Person.model_validate_json(guided.choices[0].message.content or "")
    free = client.chat.completions.create(
        model=SMOL, messages=ASK, max_tokens=60, temperature=0, response_format={"type": "json_object"}
    )
    if free.choices[0].finish_reason == "stop":  # a JSON object cut at max_tokens is not yet valid
        assert isinstance(json.loads(free.choices[0].message.content or ""), dict)


def test_response_format_is_passed_through_to_vllm(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    _, key = account
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": Person.model_json_schema()}}
    features.client(key).chat.completions.create(model=TOOLS, messages=ASK, max_tokens=3, response_format=fmt)  # type: ignore[arg-type]
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["response_format"] == fmt
    features.client(key).chat.completions.create(
        model=TOOLS, messages=ASK, max_tokens=3, extra_body={"structured_outputs": {"regex": "[a-z]+"}}
    )
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["structured_outputs"] == {"regex": "[a-z]+"}


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        (TOOLS, {"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (TOOLS, {"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            TOOLS,
            {"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
            "response_format.json_schema.schema",
        ),
        (PLAIN, {"response_format": {"type": "json_object"}}, "response_format"),
        (PLAIN, {"guided_json": {"type": "object"}}, "guided_json"),
        (SMOL, {"guided_regex": "[a-z]+"}, "guided_regex"),  # llama.cpp has no regex decoding
    ],
)
def test_bad_or_unsupported_structured_output_is_400(
    features: LiveGateway, smol: tuple[LiveGateway, str], account: tuple[str, str], model: str, extra: Any, param: str
) -> None:
    live, key = smol if model == SMOL else (features, account[1])
    with pytest.raises(openai.BadRequestError) as info:
        live.client(key).chat.completions.create(model=model, messages=ASK, max_tokens=3, extra_body=extra)  # type: ignore[arg-type]
    assert info.value.param == param
