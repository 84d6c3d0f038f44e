"""Real clients against a live gateway: the openai SDK's async and streaming helpers, LangChain, the Node SDK."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from tests.conftest import ROOT, LiveGateway, unavailable
from tests.features.conftest import EMBEDDER, REASONER, SMOL, THINK, TOOLS

ANSWER = "This is a test of the meshgate gateway , counting one token per word until the end"
CALLS = {"mock": {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}}


class Person(BaseModel):
    name: str
    age: int


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


# ---------------------------------------------------------------- openai SDK, async


def test_async_streaming_helper_with_reasoning(features: LiveGateway, account: tuple[str, str]) -> None:
    name, key = account

    async def run() -> tuple[str, str, Any]:
        client = _async(features, key)
        reasoning = content = ""
        async with client.chat.completions.stream(
            model=THINK,
            messages=[{"role": "user", "content": "Why?"}],
            max_tokens=40,
            extra_body={"mock": {"reasoning": "because it is", "reasoning_field": "think"}},
            stream_options={"include_usage": True},
        ) as stream:
            async for event in stream:
                if event.type == "chunk" and event.chunk.choices:
                    reasoning += (event.chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                elif event.type == "content.delta":
                    content += event.delta
            final = await stream.get_final_completion()
        await client.close()
        return reasoning, content, final

    reasoning, content, final = asyncio.run(run())
    assert reasoning == "because it is" and content == ANSWER
    assert final.choices[0].message.content == ANSWER
    assert final.usage.completion_tokens == 3 + 17 + 2  # reasoning, answer, the two tags
    assert features.settled(name, 1)[0][1] == final.usage.completion_tokens


def test_async_parse_with_a_pydantic_model_on_the_local_worker(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol

    async def run() -> Any:
        client = _async(live, key)
        completion = await client.chat.completions.parse(
            model=SMOL,
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format=Person,
            max_tokens=60,
            temperature=0,
        )
        await client.close()
        return completion.choices[0].message.parsed

    assert isinstance(asyncio.run(run()), Person)


def test_beta_parse_and_sync_stream_helper(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol
    client = live.client(key)
    parsed = client.beta.chat.completions.parse(
        model=SMOL,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format=Person,
        max_tokens=60,
        temperature=0,
    )
    assert isinstance(parsed.choices[0].message.parsed, Person)
    # Greedy, like the call above: a sampled name can run past any token cap (seen in CI).
    with client.beta.chat.completions.stream(
        model=SMOL,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format=Person,
        max_tokens=60,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Person)


def _async(live: LiveGateway, key: str) -> Any:
    import openai

    return openai.AsyncOpenAI(api_key=key, base_url=live.base_url + "/", max_retries=0)


# ---------------------------------------------------------------- LangChain


def _chat(live: LiveGateway, key: str, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, api_key=key, base_url=live.base_url, max_retries=0, **kwargs)  # type: ignore[arg-type]


def test_langchain_bind_tools(features: LiveGateway, account: tuple[str, str]) -> None:
    _, key = account
    llm = _chat(features, key, TOOLS, extra_body=CALLS).bind_tools([get_weather])
    message = llm.invoke([HumanMessage("What is the weather in Paris?")])
    assert message.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_0", "type": "tool_call"}
    ]
    chunks = list(_chat(features, key, TOOLS, extra_body=CALLS).bind_tools([get_weather]).stream("Weather in Paris?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk  # type: ignore[assignment]
    assert merged.tool_calls[0]["args"] == {"city": "Paris"}  # type: ignore[attr-defined]


def test_langchain_with_structured_output_on_the_local_worker(smol: tuple[LiveGateway, str]) -> None:
    live, key = smol
    person = (
        _chat(live, key, SMOL, max_tokens=60, temperature=0).with_structured_output(Person).invoke("Invent a person.")
    )
    assert isinstance(person, Person)


def test_langchain_reasoning_and_embeddings(features: LiveGateway, account: tuple[str, str]) -> None:
    _, key = account
    mock = {"mock": {"reasoning": "think first", "reasoning_field": "reasoning_content"}}
    message = _chat(features, key, REASONER, max_tokens=40, extra_body=mock).invoke("Why?")
    assert message.content == ANSWER
    embeddings = OpenAIEmbeddings(
        model=EMBEDDER,
        api_key=key,  # type: ignore[arg-type]
        base_url=features.base_url,
        check_embedding_ctx_length=False,  # send the texts (its tiktoken step would download an encoding)
        max_retries=0,
    )
    vectors = embeddings.embed_documents(["hello world", "goodbye"])
    assert len(vectors) == 2 and len(vectors[0]) == 8
    assert embeddings.embed_query("hello world") == vectors[0]


# ---------------------------------------------------------------- the Node openai package


def test_the_node_openai_package(features: LiveGateway, account: tuple[str, str]) -> None:
    """tests/node/features.mjs: streaming, tools (plain and streamed), reasoning; `make test` runs npm ci first."""
    if shutil.which("node") is None:
        unavailable("node is not installed (make test installs it)")
    name, key = account
    assert (ROOT / "tests/node/node_modules/openai").is_dir(), "run `make test` (it runs npm ci in tests/node)"
    env = {
        **os.environ,
        "MESHGATE_BASE_URL": features.base_url,
        "MESHGATE_KEY": key,
        "MODEL_TOOLS": TOOLS,
        "MODEL_REASONER": REASONER,
    }
    result = subprocess.run(
        ["node", "tests/node/features.mjs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["streamed"] == ANSWER and seen["stream_usage"]["completion_tokens"] == 17
    assert seen["tool_call"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert seen["streamed_tool_call"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert seen["reasoning"] == ["think first", "think first"] and seen["reasoning_streamed"] == "think first"
    assert seen["error"] == {"status": 400, "param": "tools", "code": "tools_not_supported"}
    charged = [c for _, c, _ in features.settled(name, 5)]
    assert charged[0] == 17
