"""Upper bounds on prompt tokens, for admission when the gateway has no tokenizer for a model.

Byte-level BPE and SentencePiece-with-byte-fallback tokenizers never make more tokens
than the text has UTF-8 bytes, so the byte count bounds the text's tokens from above.
Chat templates add a few special tokens per message and around the conversation; the
constants below cover the templates of the shipped presets (Llama 3, Qwen, Mistral,
DeepSeek, gpt-oss). Settlement always charges what the upstream reports, so the bound
only decides how much is *reserved* while a request runs.
"""

from __future__ import annotations

from typing import Any

import orjson

PER_MESSAGE_OVERHEAD = 16
PER_REQUEST_OVERHEAD = 64
PER_IMAGE_TOKENS = 4096  # vision inputs; the reservation is capped by the context length anyway


def chat_prompt_bound(body: dict[str, Any]) -> int:
    total = PER_REQUEST_OVERHEAD
    for message in body["messages"]:
        total += PER_MESSAGE_OVERHEAD
        for key, value in message.items():
            if key == "content":
                total += _content_bound(value)
            elif isinstance(value, str):
                total += len(value.encode())
            elif value is not None:
                total += len(orjson.dumps(value))
    for extra in ("tools", "functions", "response_format"):
        if body.get(extra) is not None:
            total += len(orjson.dumps(body[extra]))
    return total


def _content_bound(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                total += len(str(part.get("text", "")).encode())
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image"):
                total += PER_IMAGE_TOKENS
            else:
                total += len(orjson.dumps(part))
        return total
    return 0 if content is None else len(orjson.dumps(content))


def embedding_input_bound(inputs: list[str] | list[list[int]]) -> int:
    """Tokens of an embeddings input: exact for token arrays, a byte bound for strings (+2 for BOS/EOS)."""
    total = 0
    for item in inputs:
        total += len(item) if isinstance(item, list) else len(item.encode()) + 2
    return total
