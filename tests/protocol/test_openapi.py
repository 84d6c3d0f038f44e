"""The published document: valid OpenAPI, and its request schemas accept exactly what the validation does."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
import orjson
import pytest
import schemathesis

from meshgate.protocol.errors import ApiError
from meshgate.protocol.fields import CHAT_DROPPED, CHAT_PASSED, CHAT_REFUSED, EMBEDDINGS_PASSED
from meshgate.protocol.openapi import CHAT_REQUEST, DOCUMENT, DOCUMENT_JSON, EMBEDDINGS_REQUEST, ERROR, ERROR_STATUSES
from meshgate.protocol.requests import parse_chat, parse_embeddings
from tests.protocol.test_requests import CHAT_REFUSALS, EMBEDDING_REFUSALS, chat

chat_schema = jsonschema_rs.Draft202012Validator(CHAT_REQUEST)
embeddings_schema = jsonschema_rs.Draft202012Validator(EMBEDDINGS_REQUEST)


def accepted(parse: Any, body: dict[str, Any]) -> bool:
    try:
        parse(copy.deepcopy(body))
    except ApiError:
        return False
    return True


def test_the_document_loads_as_openapi_with_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(orjson.loads(DOCUMENT_JSON))
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert labels == {
        "POST /chat/completions",
        "POST /completions",
        "POST /embeddings",
        "GET /models",
        "GET /models/{model}",
        "GET /usage",
    }
    for path in DOCUMENT["paths"].values():
        for operation in path.values():
            if isinstance(operation, dict) and "responses" in operation:
                assert {str(status) for status in ERROR_STATUSES} <= set(operation["responses"])


def test_request_schemas_list_exactly_the_accepted_fields() -> None:
    assert set(CHAT_REQUEST["properties"]) == CHAT_PASSED | CHAT_DROPPED
    assert set(EMBEDDINGS_REQUEST["properties"]) == EMBEDDINGS_PASSED
    assert not set(CHAT_REQUEST["properties"]) & set(CHAT_REFUSED)


CHAT_ACCEPTED = [
    chat(),
    chat(stream=True, stream_options={"include_usage": True}),
    chat(
        stop="x", logit_bias={"42": -100}, tools=[{"type": "function", "function": {"name": "f"}}], n=3, max_tokens=2.0
    ),
    chat(messages=[{"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": "r"}]),
    chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]),
    chat(
        messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}
        ]
    ),
    chat(reasoning_content=False, reasoning={"effort": "low"}, reasoning_effort="high", logprobs=True, top_logprobs=3),
    chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}], tool_choice="required"),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
    chat(top_k=5, guided_json={}, chat_template_kwargs={"enable_thinking": True}, store=True),
]
CHAT_REFUSED_BODIES = [
    *(body for body, _ in CHAT_REFUSALS),
    chat(stream_options={"include_usage": True}),
    chat(messages=[{"role": "user"}]),
    chat(n_predict=5),
    chat(unknown=1),
    chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    chat(top_logprobs=2),
    chat(tool_choice="auto"),
    chat(tools=[]),
    chat(tools=[{"type": "function"}]),
    chat(response_format={"type": "json_schema"}),
    chat(response_format={"type": "yaml"}),
    chat(reasoning={"effort": "max"}),
    chat(reasoning_effort="lots"),
    {"messages": [{"role": "user", "content": "x"}]},
]


@pytest.mark.parametrize("body", CHAT_ACCEPTED + CHAT_REFUSED_BODIES)
def test_the_chat_schema_and_the_validation_agree(body: dict[str, Any]) -> None:
    assert chat_schema.is_valid(body) == accepted(parse_chat, body)


@pytest.mark.parametrize(
    "value",
    ["x", ["a", "b"], [1, 2], [[1], [2, 3]], [1.0], *(value for value, _ in EMBEDDING_REFUSALS), [], [[]], ["a", 1]],
)
def test_the_embeddings_schema_and_the_validation_agree(value: Any) -> None:
    body = {"model": "e", "input": value}
    assert embeddings_schema.is_valid(body) == accepted(parse_embeddings, body)


def test_errors_are_the_openai_envelope() -> None:
    validator = jsonschema_rs.Draft202012Validator(ERROR)
    assert validator.is_valid(orjson.loads(ApiError(400, "bad", param="n").body()))
    assert not validator.is_valid({"error": {"message": "bad"}})
