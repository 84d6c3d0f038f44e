"""What the gateway knows about a model: its kind, limits, quotas and where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModelKind = Literal["chat", "embedding"]
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
class ModelSpec:
    id: str
    kind: ModelKind
    context_length: int
    daily_quota: dict[Bucket, int]  # a bucket left out is not offered for this model
    owned_by: str = "meshgate"
    created: int = 0
    upstreams: tuple[UpstreamSpec, ...] = ()
    local: LocalSpec | None = None

    def offers(self, bucket: Bucket) -> bool:
        return bucket in self.daily_quota
