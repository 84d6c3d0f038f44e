"""End to end with the real `openai` SDK against a live `meshgate serve` and a fake engine."""

from __future__ import annotations

import base64
import struct
import time

import httpx
import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.fakes.upstream import REPLY, embed, prompt_tokens

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES = [{"role": "user", "content": "Say this is a test!"}]


def test_models_list_and_retrieve(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {
        LLAMA,
        "Qwen/Qwen2.5-VL-32B-Instruct",
        "meta-llama/Llama-3.2-90B-Vision-Instruct",
        "web-only/Chat-Model",
        "BAAI/bge-multilingual-gemma2",
    }
    card = models[LLAMA].model_dump()
    assert card["object"] == "model" and card["owned_by"] == "io-intelligence"
    assert card["max_model_len"] == 128000 and card["root"] == LLAMA and card["parent"] is None
    assert card["permission"][0]["object"] == "model_permission"
    assert client.models.retrieve(LLAMA).id == LLAMA
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no/such-model")
    assert info.value.code == "model_not_found"


def test_chat_completion_fields_usage_and_headers(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    client = gateway.client(account[1])
    raw = client.chat.completions.with_raw_response.create(
        model=LLAMA, messages=MESSAGES, max_completion_tokens=5, temperature=0.7, seed=3, stop=["END"], user="u1"
    )
    completion = raw.parse()
    assert completion.model == LLAMA  # the upstream's own name ("served-llama") never leaks
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == " ".join(REPLY[:5])
    assert completion.choices[0].finish_reason == "length"
    expected_prompt = prompt_tokens(MESSAGES)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (expected_prompt, 5)
    assert completion.usage.total_tokens == expected_prompt + 5
    # what the engine received: its own model name, the cap, the client's fields
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict)
    assert sent["model"] == "served-llama" and sent["max_tokens"] == 5 and "max_completion_tokens" not in sent
    assert (sent["temperature"], sent["seed"], sent["stop"], sent["user"]) == (0.7, 3, ["END"], "u1")
    # rate-limit headers describe the window after settlement
    assert raw.headers["x-ratelimit-limit-tokens"] == "500000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 500000 - expected_prompt - 5
    assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")
    window = gateway.window(account[1], LLAMA)
    assert (window["used"], window["reserved"]) == (expected_prompt + 5, 0)


def test_unknown_fields_pass_through(
    gateway: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    client = gateway.client(account[1])
    client.chat.completions.create(
        model=LLAMA, messages=MESSAGES, max_tokens=2, extra_body={"top_k": 7, "repetition_penalty": 1.1}
    )
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["top_k"] == 7 and sent["repetition_penalty"] == 1.1


def test_n_choices(gateway: LiveGateway, account: tuple[str, str]) -> None:
    completion = gateway.client(account[1]).chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=3, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage is not None and completion.usage.completion_tokens == 6


def test_streaming_with_usage(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    stream = client.chat.completions.create(
        model=LLAMA, messages=MESSAGES, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(REPLY[:4])
    assert all(c.model == LLAMA for c in chunks)
    assert all(c.usage is None for c in chunks[:-1])  # usage only in the last event, as OpenAI does
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (prompt_tokens(MESSAGES), 4)
    assert gateway.window(account[1], LLAMA)["used"] == prompt_tokens(MESSAGES) + 4


def test_streaming_without_usage_still_charges(gateway: LiveGateway, account: tuple[str, str]) -> None:
    chunks = list(
        gateway.client(account[1]).chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=3, stream=True)
    )
    assert all(c.usage is None for c in chunks) and chunks[-1].choices
    assert gateway.window(account[1], LLAMA)["used"] == prompt_tokens(MESSAGES) + 3


def test_raw_sse_wire_format(gateway: LiveGateway, account: tuple[str, str]) -> None:
    body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 2, "stream": True}
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {account[1]}"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ratelimit-limit-tokens"] == "500000"
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert sum(1 for line in lines if line != "data: [DONE]") == 4  # role, 2 tokens, finish


def test_embeddings_float_and_base64(gateway: LiveGateway, account: tuple[str, str]) -> None:
    client = gateway.client(account[1])
    model = "BAAI/bge-multilingual-gemma2"
    result = client.embeddings.create(model=model, input=["hello world", "second text"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(embed("hello world"))
    assert result.model == model and result.usage.prompt_tokens == 8
    raw = httpx.post(
        gateway.base_url + "/embeddings",
        json={"model": model, "input": "hello world", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {account[1]}"},
    ).json()
    decoded = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(embed("hello world"))
    # the SDK's default asks for base64 and decodes it itself
    assert client.embeddings.create(model=model, input="hello world").data[0].embedding == pytest.approx(
        embed("hello world")
    )
    assert gateway.window(account[1], model, "embeddings")["used"] == 8 + 4 + 4


def test_usage_endpoint_shape(gateway: LiveGateway, account: tuple[str, str]) -> None:
    usage = gateway.usage(account[1])
    assert usage["object"] == "usage" and usage["resets_at"].endswith("T00:00:00Z")  # type: ignore[union-attr]
    rows = {(r["model"], r["bucket"]): r for r in usage["data"]}  # type: ignore[union-attr]
    # buckets a model does not offer are not listed; "0 tk" ones are, with a zero limit
    assert (LLAMA, "embeddings") not in rows and ("Qwen/Qwen2.5-VL-32B-Instruct", "chat") not in rows
    assert rows[("meta-llama/Llama-3.2-90B-Vision-Instruct", "api")]["limit"] == 0
    assert rows[(LLAMA, "api")] == {
        "model": LLAMA,
        "bucket": "api",
        "used": 0,
        "reserved": 0,
        "limit": 500000,
        "remaining": 500000,
    }


def test_key_last_use_is_recorded(gateway: LiveGateway) -> None:
    name, key = gateway.new_account()
    key_id = key.split("-")[1]

    def last_used() -> str:
        row = next(
            line
            for line in gateway.cli("keys", "list", "--account", name).stdout.splitlines()
            if line.startswith(key_id)
        )
        return row.split("\t")[3]

    assert last_used() == "-"
    gateway.client(key).models.list()
    deadline = time.monotonic() + 5
    while last_used() == "-":
        assert time.monotonic() < deadline, "last use was not recorded"
        time.sleep(0.1)
