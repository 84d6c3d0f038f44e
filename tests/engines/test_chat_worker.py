"""The llama.cpp chat worker with the real SmolLM2 model, driven by the real openai SDK."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from meshgate.engines.llamacpp import DEFAULT_SYSTEM_PROMPT
from tests.engines.conftest import CHAT_NAME, RunningWorker

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(chat_worker: RunningWorker) -> openai.OpenAI:
    # Retries as the SDK does by default: llama.cpp's HTTP server rarely drops a reused keep-alive connection.
    return openai.OpenAI(base_url=chat_worker.url, api_key="unused", max_retries=2)


def prompt_tokens(worker: RunningWorker, messages: list[ChatCompletionMessageParam]) -> tuple[str, int]:
    """The templated prompt and its length, by the model's own template and tokenizer (in llama.cpp)."""
    prompt = httpx.post(f"{worker.root}/apply-template", json={"messages": messages}).json()["prompt"]
    tokens = httpx.post(f"{worker.root}/tokenize", json={"content": prompt, "parse_special": True}).json()
    return prompt, len(tokens["tokens"])


def test_health_and_models(chat_worker: RunningWorker, client: openai.OpenAI) -> None:
    assert httpx.get(f"{chat_worker.root}/health").status_code == 200
    assert [m.id for m in client.models.list().data] == [CHAT_NAME]


def test_completion_text_and_usage(chat_worker: RunningWorker, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT_NAME, messages=QUESTION, max_tokens=40, temperature=0)
    assert r.model == CHAT_NAME
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content and r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None
    prompt, expected = prompt_tokens(chat_worker, list(QUESTION))
    # The default system prompt went through the model's own template and is counted.
    assert f"system\n{DEFAULT_SYSTEM_PROMPT}" in prompt
    assert r.usage.prompt_tokens == expected
    assert 0 < r.usage.completion_tokens <= 40
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_own_system_prompt_replaces_default(chat_worker: RunningWorker) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": 'Talk like a "pirate".'},
        *QUESTION,
    ]
    prompt, _ = prompt_tokens(chat_worker, messages)
    assert 'Talk like a "pirate".' in prompt
    assert DEFAULT_SYSTEM_PROMPT not in prompt


def test_max_completion_tokens_and_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=CHAT_NAME,
        messages=[{"role": "user", "content": "Write a long poem about the sea."}],
        max_completion_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"


def test_stop_sequence(client: openai.OpenAI) -> None:
    def complete(**kw: object) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=CHAT_NAME,
            messages=QUESTION,
            max_tokens=30,
            temperature=0,
            seed=7,
            **kw,  # type: ignore[call-overload]
        )

    full = complete().choices[0].message.content or ""
    words = full.split()
    assert len(words) > 4, full
    stop_word = words[3]  # a word the greedy answer is known to contain
    r = complete(stop=[stop_word])
    assert r.choices[0].finish_reason == "stop"
    text = r.choices[0].message.content or ""
    assert stop_word not in text
    assert full.startswith(text)


def test_seed_reproducible(client: openai.OpenAI) -> None:
    def sample() -> str:
        r = client.chat.completions.create(
            model=CHAT_NAME, messages=QUESTION, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234
        )
        return r.choices[0].message.content or ""

    assert sample() == sample()


def test_streaming_with_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_NAME,
        messages=QUESTION,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.model == CHAT_NAME
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 30 and usage.prompt_tokens > 0


def test_stream_wire_format_ends_with_done(chat_worker: RunningWorker) -> None:
    body = {"model": CHAT_NAME, "messages": QUESTION, "max_tokens": 10, "stream": True}
    with httpx.stream("POST", f"{chat_worker.url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).strip()


def test_client_disconnect_stops_generation(chat_worker: RunningWorker) -> None:
    body = {
        "model": CHAT_NAME,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,  # ~15 s of generation if nobody stopped it
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{chat_worker.url}/chat/completions", json=body, timeout=60) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break  # hang up mid-stream
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        slots = httpx.get(f"{chat_worker.root}/slots").json()
        if not any(s["is_processing"] for s in slots):
            return
        time.sleep(0.1)
    pytest.fail("generation still running 5 s after the client disconnected")


def test_unknown_route_is_an_error(chat_worker: RunningWorker) -> None:
    r = httpx.post(f"{chat_worker.url}/chat/completions", content=b"{not json")
    assert r.status_code >= 400
    assert "error" in r.json()
