"""Benchmark the local workers: chat tokens/s at 1 and 8 concurrent streams, embeddings/s at batch 1 and 64.

Direct to workers it starts itself (default), or to running ones (--chat-url/--embed-url),
and through a gateway too with --gateway URL --key K.

    .venv/bin/python bench/local_engines.py
    .venv/bin/python bench/local_engines.py --gateway http://127.0.0.1:8000/api/v1 --key sk-...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from meshgate.catalog.spec import LocalSpec
from meshgate.engines.launch import engine_command, health_path
from meshgate.workers.local import LocalWorker, free_port

PROMPT = "Write a short story about a lighthouse keeper and a storm."
TEMPERATURE = 0.7
TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank."


@dataclass
class Target:
    label: str
    url: str  # base URL ending in /v1
    key: str | None
    chat_model: str
    embed_model: str

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}


async def one_stream(client: httpx.AsyncClient, t: Target, max_tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds to first token, total seconds) of one streamed completion."""
    try:
        return await _one_stream(client, t, max_tokens)
    except httpx.RemoteProtocolError:
        # cpp-httplib sometimes drops a reused keep-alive connection before answering (~1 in 500);
        # nothing was generated, so retrying once is safe.
        return await _one_stream(client, t, max_tokens)


async def _one_stream(client: httpx.AsyncClient, t: Target, max_tokens: int) -> tuple[int, float, float]:
    body = {
        "model": t.chat_model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # llama.cpp extension: every stream generates exactly max_tokens
        "temperature": TEMPERATURE,
    }
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", f"{t.url}/chat/completions", json=body, headers=t.headers()) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not first and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first, time.perf_counter() - start


async def chat(client: httpx.AsyncClient, t: Target, streams: int, max_tokens: int, rounds: int) -> None:
    rates, aggs, ttfts = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, t, max_tokens) for _ in range(streams)))
        wall = time.perf_counter() - start
        aggs.append(sum(r[0] for r in results) / wall)
        rates += [r[0] / r[2] for r in results]
        ttfts += [r[1] for r in results]
    print(
        f"{t.label:7} chat  {streams} stream(s) x {max_tokens} tok: aggregate {statistics.median(aggs):7.1f} tok/s,"
        f" per stream {statistics.median(rates):6.1f} tok/s, TTFT median {statistics.median(ttfts) * 1000:5.0f} ms"
    )


async def embed(client: httpx.AsyncClient, t: Target, batch: int, requests: int, concurrency: int) -> None:
    body = {"model": t.embed_model, "input": [f"{TEXT} #{i}" for i in range(batch)], "encoding_format": "base64"}
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            r = await client.post(f"{t.url}/embeddings", json=body, headers=t.headers())
            r.raise_for_status()

    await one()  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - start
    print(
        f"{t.label:7} embed batch {batch:3} x {requests:3} requests, {concurrency} concurrent: "
        f"{batch * requests / wall:7.1f} embeddings/s, {wall / requests * 1000:6.1f} ms/request"
    )


@contextlib.asynccontextmanager
async def local_workers(args: argparse.Namespace) -> AsyncIterator[tuple[str, str]]:
    """Start the two builtin workers unless URLs were given; yield their base URLs."""
    workers = []
    urls = [args.chat_url, args.embed_url]
    specs = [
        (LocalSpec("llama.cpp", "builtin:smollm2"), args.chat_model, 8192),
        (LocalSpec("sentence-transformers", "builtin:all-minilm-l6-v2"), args.embed_model, 256),
    ]
    for i, (spec, name, ctx) in enumerate(specs):
        if urls[i]:
            continue
        port = free_port()
        w = LocalWorker(name, engine_command(spec, name, ctx, port), port, health_path=health_path(spec.engine))
        await w.start()
        workers.append(w)
        urls[i] = w.url
    try:
        for w in workers:
            if not await w.wait_ready(180):
                raise SystemExit(f"worker {w.name} did not become ready")
        yield urls[0], urls[1]
    finally:
        for w in workers:
            await w.stop()


async def run(args: argparse.Namespace) -> None:
    async with local_workers(args) as (chat_url, embed_url), httpx.AsyncClient(timeout=300) as client:
        targets = [Target("direct", chat_url, None, args.chat_model, args.embed_model)]
        if args.gateway:
            # Same worker through the gateway: same model names, the gateway's key.
            targets.append(Target("gateway", args.gateway.rstrip("/"), args.key, args.chat_model, args.embed_model))
        # Embeddings go to their own worker when direct; the gateway serves both on one URL.
        for t in targets:
            if args.skip_chat:
                break
            await one_stream(client, t, 8)  # warm-up
            await chat(client, t, 1, args.max_tokens, args.rounds)
            await chat(client, t, 8, args.max_tokens, args.rounds)
        for t in targets:
            et = Target(t.label, embed_url if t.label == "direct" else t.url, t.key, t.chat_model, t.embed_model)
            await embed(client, et, 1, 200, 1)
            await embed(client, et, 1, 200, 8)
            await embed(client, et, 64, 20, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chat-url", help="running chat worker base URL (…/v1); default: start one")
    p.add_argument("--embed-url", help="running embeddings worker base URL (…/v1); default: start one")
    p.add_argument("--chat-model", default="smollm2-135m-instruct")
    p.add_argument("--embed-model", default="all-minilm-l6-v2")
    p.add_argument("--gateway", help="gateway base URL (…/v1) to measure through as well")
    p.add_argument("--key", help="API key for --gateway")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-chat", action="store_true")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
