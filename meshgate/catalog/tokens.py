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
PER_IMAGE_TOKENS = 16384  # vision inputs (catalog `image_tokens`): Qwen2.5-VL's most at its default max_pixels
# No tokenizer of the supported families averages more UTF-8 bytes per token than this over a
# prompt (long whitespace runs in code come closest): the floor below never overcounts, so it
# can refuse a request that cannot fit without asking an engine to count it.
MAX_BYTES_PER_TOKEN = 32


def chat_prompt_bound(body: dict[str, Any], image_tokens: int = PER_IMAGE_TOKENS) -> int:
    """Tokens of a chat prompt at most; an image counts `image_tokens` whatever its bytes (a 20 MB
    image is a few thousand tokens, not millions), and its floor nothing (`prompt_floor`)."""
    total = PER_REQUEST_OVERHEAD
    for message in body["messages"]:
        total += PER_MESSAGE_OVERHEAD
        for key, value in message.items():
            if key == "content":
                total += _content_bound(value, image_tokens)
            elif isinstance(value, str):
                total += len(value.encode())
            elif value is not None:
                total += len(orjson.dumps(value))
    for extra in ("tools", "functions", "response_format"):
        if body.get(extra) is not None:
            total += len(orjson.dumps(body[extra]))
    return total


def _content_bound(content: Any, image_tokens: int) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                total += len(str(part.get("text", "")).encode())
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image"):
                total += image_tokens
            else:
                total += len(orjson.dumps(part))
        return total
    return 0 if content is None else len(orjson.dumps(content))


def prompt_floor(bound: int, messages: int) -> int:
    """At most the prompt's tokens, from its bound: the bytes without the per-message overheads, per 32."""
    text_bytes = max(bound - PER_REQUEST_OVERHEAD - PER_MESSAGE_OVERHEAD * messages, 0)
    return text_bytes // MAX_BYTES_PER_TOKEN


def text_bound(text: str) -> int:
    """Tokens of a text at most: its UTF-8 bytes."""
    return len(text.encode())


def embedding_input_bound(inputs: list[str] | list[list[int]]) -> int:
    """Tokens of an embeddings input: exact for token arrays, a byte bound for strings (+2 for BOS/EOS)."""
    total = 0
    for item in inputs:
        total += len(item) if isinstance(item, list) else len(item.encode()) + 2
    return total
