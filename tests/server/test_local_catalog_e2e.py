"""`[models.local]` in a catalog: any GGUF file or sentence-transformers folder, served like the defaults."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from meshgate.engines.builtin import resolve_builtin
from tests.conftest import LiveGateway, start_gateway, stop, until_served


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, str]]:
    gguf = resolve_builtin("builtin:smollm2")  # a real path, as `meshgate models pull` prints one
    folder = resolve_builtin("builtin:all-minilm-l6-v2")
    catalog = f"""
[[models]]
id = "my-org/my-chat-model"
kind = "chat"
context_length = 2048
daily_quota = {{ api = 100000 }}
[models.local]
engine = "llama.cpp"
path = "{gguf}"
parallel = 2
threads = 2
default_system_prompt = "You are terse."

[[models]]
id = "my-org/my-embedder"
kind = "embedding"
context_length = 256
daily_quota = {{ embeddings = 100000 }}
[models.local]
engine = "sentence-transformers"
path = "{folder}"
"""
    live = start_gateway(tmp_path_factory.mktemp("local-catalog"), catalog)
    try:
        _, key = live.new_account()
        client = live.client(key)

        def both() -> None:
            client.chat.completions.create(
                model="my-org/my-chat-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
            client.embeddings.create(model="my-org/my-embedder", input="hi")

        until_served(both, 120, lambda: "local workers from the catalog did not become ready")
        yield live, key
    finally:
        assert live.process is not None
        stop(live.process)


def test_catalog_local_models_serve_and_count(custom: tuple[LiveGateway, str]) -> None:
    live, key = custom
    client = live.client(key)
    completion = client.chat.completions.create(
        model="my-org/my-chat-model", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8
    )
    assert completion.model == "my-org/my-chat-model" and completion.choices[0].message.content
    assert completion.usage is not None
    vectors = client.embeddings.create(model="my-org/my-embedder", input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    assert live.window(key, "my-org/my-chat-model")["used"] > completion.usage.total_tokens  # + the warm-up call
    # the catalog's context length is the worker's: one token past it is refused up front
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="my-org/my-chat-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2048
        )
    assert info.value.code == "context_length_exceeded"
