"""What the gateway knows about a model: its kind, limits, quotas and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModelKind = Literal["chat", "embedding"]
Reasoning = bool | Literal["always"]
Bucket = Literal["chat", "api", "embeddings"]
BUCKETS: tuple[Bucket, ...] = ("chat", "api", "embeddings")


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One OpenAI-compatible server that serves the model (vLLM, SGLang, llama.cpp, Ollama, TGI, ...)."""

    url: str  # base URL ending in /v1, e.g. "http://10.0.0.5:8000/v1"
    model: str  # the name the upstream knows the model by
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class LocalSpec:
    """A worker the gateway starts itself on this machine (the embedded default).

    `engine` is "llama.cpp" (GGUF chat models) or "sentence-transformers" (embeddings).
    `path` is a GGUF file, a sentence-transformers folder, or a "builtin:NAME" shipped model.
    """

    engine: str
    path: str
    threads: int | None = None
    parallel: int | None = None  # concurrent sequences (llama.cpp slots)
    default_system_prompt: str | None = None
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a chat model's engine can do; a request that needs more is refused (400) before any work.

    The defaults fit a vLLM text model started with tool calling and structured outputs on:
    tools, JSON output and logprobs yes, images and reasoning no (they must be declared).
    """

    reasoning: Reasoning = False  # True: reasons, can be told not to; "always": cannot be turned off
    think_tags: bool = False  # the engine leaves <think>…</think> in the content: the gateway splits it out
    tools: bool = True
    json: bool = True  # response_format json_object/json_schema and the engines' guided decoding fields
    logprobs: bool = True
    vision: bool = False  # image_url content parts
    image_tokens: int = 16384  # at most this many prompt tokens per image (the admission's bound)


TEXT_ONLY = Capabilities()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    kind: ModelKind
    context_length: int
    daily_quota: dict[Bucket, int]  # a bucket left out is not offered for this model
    owned_by: str = "meshgate"
    created: int = 0
    upstreams: tuple[UpstreamSpec, ...] = ()
    local: LocalSpec | None = None
    suffix: bool = False  # the engine takes `suffix` at /completions (fill-in-the-middle); vLLM and llama.cpp do not
    capabilities: Capabilities = TEXT_ONLY

    def offers(self, bucket: Bucket) -> bool:
        return bucket in self.daily_quota
