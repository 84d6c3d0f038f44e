"""Gateways for the feature tests: models with declared capabilities on the fake engine, and real SmolLM2.

`features` serves on the fake engine (tests/fakes/features.py steers its answers):
REASONER (reasoning = true, the engine's field), ALWAYS (reasoning = "always"), THINK
(always, with inline <think> tags the gateway splits), VISION (vision, 1000 tokens per
image reserved), PLAIN (no tools, no JSON, no logprobs), TOOLS (the defaults) and an embedder.
`smol` serves the real SmolLM2-135M on the local llama.cpp worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshgate.engines.builtin import resolve_builtin
from tests.conftest import FakeUpstream, LiveGateway, start_gateway, stop, until_served

REASONER = "test/reasoner"
ALWAYS = "test/always-reasoner"
THINK = "test/think-tags"
VISION = "test/vision"
PLAIN = "test/plain"
TOOLS = "test/tools"
EMBEDDER = "test/embedder"
SMOL = "local/smollm2"


def _model(model_id: str, url: str, extra: str = "", kind: str = "chat") -> str:
    quota = "embeddings = 1000000" if kind == "embedding" else "api = 1000000"
    return f"""
[[models]]
id = "{model_id}"
kind = "{kind}"
context_length = 32000
daily_quota = {{ {quota} }}
{extra}
[[models.upstreams]]
url = "{url}"
"""


@pytest.fixture(scope="session")
def features(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    url = fake_upstream.url
    catalog = "".join(
        [
            _model(REASONER, url, "reasoning = true"),
            _model(ALWAYS, url, 'reasoning = "always"'),
            _model(THINK, url, 'reasoning = "always"\nthink_tags = true'),
            _model(VISION, url, "vision = true\nimage_tokens = 1000"),
            _model(PLAIN, url, "tools = false\njson = false\nlogprobs = false"),
            _model(TOOLS, url),
            _model(EMBEDDER, url, kind="embedding"),
        ]
    )
    live = start_gateway(tmp_path_factory.mktemp("features"), catalog)
    yield live
    assert live.process is not None
    stop(live.process)


@pytest.fixture
def account(features: LiveGateway) -> tuple[str, str]:
    return features.new_account()


@pytest.fixture(scope="session")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, str]]:
    """The real SmolLM2 behind a live gateway, and a key."""
    catalog = f"""
[[models]]
id = "{SMOL}"
kind = "chat"
context_length = 2048
daily_quota = {{ api = 1000000 }}
[models.local]
engine = "llama.cpp"
path = "{resolve_builtin("builtin:smollm2")}"
parallel = 2
threads = 2
"""
    live = start_gateway(tmp_path_factory.mktemp("smol"), catalog)
    try:
        _, key = live.new_account()
        client = live.client(key)
        until_served(
            lambda: client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
            ),
            180,
            lambda: "the local worker did not become ready",
        )
        yield live, key
    finally:
        assert live.process is not None
        stop(live.process)
