"""Per-field policy end to end: refused fields never reach the engine, harmless ones arrive unchanged."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from meshgate.protocol.fields import CHAT_REFUSED, EMBEDDINGS_REFUSED
from tests.conftest import FakeUpstream, LiveGateway

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
EMBEDDER = "BAAI/bge-multilingual-gemma2"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def key(gateway: LiveGateway) -> str:
    """One account for the module: refused requests cost nothing, and new accounts cost a CLI run each."""
    return gateway.new_account("fields")[1]


def post(gateway: LiveGateway, key: str, body: dict[str, Any], path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(gateway.base_url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def engine_requests(upstream: FakeUpstream) -> int:
    return int(upstream.stats()["requests"])  # type: ignore[call-overload]


def test_the_reproduction_never_reaches_the_engine(
    gateway: LiveGateway, account: tuple[str, str], fake_upstream: FakeUpstream
) -> None:
    before = engine_requests(fake_upstream)
    body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 1, "n_predict": 600, "ignore_eos": True}
    response = post(gateway, account[1], body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "n_predict" and error["code"] == "unsupported_parameter"
    assert "use max_tokens" in error["message"]
    assert engine_requests(fake_upstream) == before
    assert gateway.window(account[1], LLAMA)["used"] == 0


@pytest.mark.parametrize("name", sorted(CHAT_REFUSED))
def test_a_refused_chat_field_is_400_and_the_engine_never_sees_it(
    gateway: LiveGateway, key: str, fake_upstream: FakeUpstream, name: str
) -> None:
    before = engine_requests(fake_upstream)
    response = post(gateway, key, {"model": LLAMA, "messages": MESSAGES, "max_tokens": 2, name: 4})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == name
    assert engine_requests(fake_upstream) == before


@pytest.mark.parametrize("name", ["messages", "priority", "request_id", "mm_processor_kwargs"])
def test_a_refused_embeddings_field_is_400_and_the_engine_never_sees_it(
    gateway: LiveGateway, key: str, fake_upstream: FakeUpstream, name: str
) -> None:
    assert name in EMBEDDINGS_REFUSED
    before = engine_requests(fake_upstream)
    response = post(gateway, key, {"model": EMBEDDER, "input": "x", name: MESSAGES}, "/embeddings")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == name
    assert engine_requests(fake_upstream) == before


def test_unknown_fields_are_refused(gateway: LiveGateway, key: str, fake_upstream: FakeUpstream) -> None:
    before = engine_requests(fake_upstream)
    response = post(gateway, key, {"model": LLAMA, "messages": MESSAGES, "max_token": 5})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Unrecognized request argument supplied: max_token",
        "type": "invalid_request_error",
        "param": "max_token",
        "code": "unknown_parameter",
    }
    assert engine_requests(fake_upstream) == before


def test_the_sdk_sees_a_refusal_as_bad_request(gateway: LiveGateway, key: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client(key).chat.completions.create(
            model=LLAMA, messages=MESSAGES, max_tokens=1, extra_body={"best_of": 8}
        )
    assert info.value.param == "best_of" and "use n" in info.value.message


def test_harmless_extensions_arrive_at_the_engine_unchanged(
    gateway: LiveGateway, key: str, fake_upstream: FakeUpstream
) -> None:
    extensions = {
        "top_k": 7,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "guided_json": {"type": "object"},
        "structured_outputs": {"regex": "[a-z]+"},
        "chat_template_kwargs": {"enable_thinking": False},
        "ignore_eos": True,
        "mirostat": 2,
    }
    completion = gateway.client(key).chat.completions.create(
        model=LLAMA, messages=MESSAGES, max_tokens=2, extra_body=extensions
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert {name: sent.get(name) for name in extensions} == extensions
    assert sent["max_tokens"] == 2


def test_openai_fields_no_engine_uses_are_dropped(gateway: LiveGateway, key: str, fake_upstream: FakeUpstream) -> None:
    gateway.client(key).chat.completions.create(
        model=LLAMA, messages=MESSAGES, max_tokens=2, store=True, metadata={"a": "b"}, service_tier="auto"
    )
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and not {"store", "metadata", "service_tier"} & set(sent)


def test_operator_extra_fields_reach_the_engine(gateway: LiveGateway, key: str, fake_upstream: FakeUpstream) -> None:
    # conftest sets MESHGATE_EXTRA_FIELDS=mock: the fake engine's steering field passes
    post(gateway, key, {"model": LLAMA, "messages": MESSAGES, "max_tokens": 2, "mock": {"delay_ms": 0}})
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["mock"] == {"delay_ms": 0}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": MESSAGES * 2049}, "messages"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 257}]}, "messages[0].content"),
        ({"max_tokens": 2**31}, "max_tokens"),
    ],
)
def test_limits_are_checked_before_any_work(
    gateway: LiveGateway, key: str, fake_upstream: FakeUpstream, fields: dict[str, Any], param: str
) -> None:
    before = fake_upstream.stats()
    response = post(gateway, key, {"model": LLAMA, "messages": MESSAGES, **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    after = fake_upstream.stats()
    assert (after["requests"], after["tokenize_calls"]) == (before["requests"], before["tokenize_calls"])


def test_the_openapi_document_needs_no_key(gateway: LiveGateway) -> None:
    response = httpx.get(f"http://127.0.0.1:{gateway.port}/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert {"/chat/completions", "/completions", "/embeddings", "/models", "/models/{model}", "/usage"} == set(
        document["paths"]
    )
