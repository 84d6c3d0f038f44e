"""Embeddings worker: an OpenAI-compatible /v1/embeddings server over sentence-transformers.

Run: python -m meshgate.engines.embeddings --model PATH|builtin:all-minilm-l6-v2 --served-name NAME --port N

Raw ASGI on uvicorn (httptools + uvloop); inference runs batched in a worker thread.
Routes: POST /v1/embeddings, GET /v1/models, GET /health (and /v1/health).
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from meshgate.engines.asgi import HTTPError, Receive, Scope, Send, read_json, send_json
from meshgate.engines.batcher import MicroBatcher
from meshgate.engines.builtin import resolve_builtin
from meshgate.engines.embedder import Embedder, Embedding
from meshgate.engines.lifecycle import die_with_parent

log = logging.getLogger("meshgate.engines.embeddings")

MAX_BODY = 16 * 1024 * 1024
MAX_INPUTS = 2048  # OpenAI's limit per request


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    texts: list[str]
    base64: bool


def parse_request(body: Any, served_name: str, dimensions: int) -> EmbeddingRequest:
    """Validate an OpenAI embeddings request; raise HTTPError(400/404) with a clear message."""
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_name:
        raise HTTPError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(isinstance(t, int | list) for t in raw):
        raise HTTPError(400, "token arrays are not supported by this model server: send text", param="input")
    else:
        raise HTTPError(400, "'input' must be a non-empty string or a non-empty array of strings", param="input")
    if len(texts) > MAX_INPUTS:
        raise HTTPError(400, f"'input' may hold at most {MAX_INPUTS} strings", param="input")
    if any(not t for t in texts):
        raise HTTPError(400, "'input' must not contain empty strings", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise HTTPError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and dims != dimensions:
        raise HTTPError(400, f"this model only supports dimensions={dimensions}", param="dimensions")
    return EmbeddingRequest(texts, fmt == "base64")


def encode_vector(vector: np.ndarray, as_base64: bool) -> Any:
    if as_base64:
        # OpenAI's format: little-endian float32 bytes, base64.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector


def render(results: list[Embedding], as_base64: bool, served_name: str) -> dict[str, Any]:
    tokens = sum(r.tokens for r in results)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(r.vector, as_base64)}
            for i, r in enumerate(results)
        ],
        "model": served_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class EmbeddingsApp:
    """The raw ASGI application."""

    def __init__(self, embedder: Embedder, served_name: str, max_batch: int = 64) -> None:
        self.embedder = embedder
        self.served_name = served_name
        self.batcher: MicroBatcher[str, Embedding] = MicroBatcher(embedder.embed, max_batch=max_batch)
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPError as err:
            await send_json(send, err.status, err.body())
        except ConnectionResetError:
            pass
        except Exception:
            log.exception("embeddings request failed")
            await send_json(send, 500, HTTPError(500, "internal error while computing embeddings").body())

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path in ("/health", "/v1/health"):
            await send_json(send, 200, {"status": "ok"})
        elif path == "/v1/models" and method == "GET":
            await send_json(send, 200, {"object": "list", "data": [self._card()]})
        elif path == "/v1/embeddings":
            if method != "POST":
                raise HTTPError(405, "use POST for /v1/embeddings")
            await self._embeddings(receive, send)
        else:
            raise HTTPError(404, f"no route for {method} {path}", code="not_found")

    def _card(self) -> dict[str, Any]:
        return {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "meshgate"}

    async def _embeddings(self, receive: Receive, send: Send) -> None:
        request = parse_request(await read_json(receive, MAX_BODY), self.served_name, self.embedder.dimensions)
        results = await self.batcher.submit(request.texts)
        await send_json(send, 200, render(results, request.base64, self.served_name))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.batcher.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshgate.engines.embeddings", description=__doc__)
    p.add_argument("--model", required=True, help="sentence-transformers folder or builtin:all-minilm-l6-v2")
    p.add_argument("--served-name", required=True, help="model name reported in responses")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-seq-length", type=int, help="truncate inputs to this many tokens")
    p.add_argument("--max-batch", type=int, default=64, help="most inputs run in one batch")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    die_with_parent()
    import uvicorn

    started = time.monotonic()
    embedder = Embedder(resolve_builtin(args.model), threads=args.threads, max_seq_length=args.max_seq_length)
    app = EmbeddingsApp(embedder, args.served_name, max_batch=args.max_batch)
    log.info(
        "%s loaded (%d dimensions) in %.1f s",
        args.served_name,
        embedder.dimensions,
        time.monotonic() - started,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
