"""Schemathesis against a live gateway and the fake engine: the gateway keeps the document it publishes.

Requests are generated from `GET /openapi.json` (what the validation accepts, and what it
does not), with a key and without one, under a fixed seed. Every answer must be no 5xx,
errors in the OpenAI envelope, successes matching their schema; a request the document
allows is refused only for what a schema cannot know (context, model kind, quota), and
one it does not allow is refused. `make test` runs a few examples per operation (~30 s),
`make fuzz` many more: MESHGATE_FUZZ_EXAMPLES per operation and key mode.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case

from meshgate.protocol.openapi import DOCUMENT, DOCUMENT_JSON
from tests.conftest import LiveGateway, catalog_for, start_fake_upstream, start_gateway, stop

EXAMPLES = int(os.environ.get("MESHGATE_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("MESHGATE_FUZZ_SEED", "20250601"))

CHAT_MODELS = ["meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen2.5-VL-32B-Instruct"]
EMBEDDING_MODELS = ["BAAI/bge-multilingual-gemma2"]
# A 400 that only the gateway's state can decide: it says nothing about the document.
SEMANTIC_400 = frozenset(
    {
        "context_length_exceeded",
        "wrong_model_kind",
        "model_not_available_for_surface",
        "unsupported_by_model",
        # what the model's catalog entry says it can do (server/features.py), and images counted across messages
        "images_not_supported",
        "tools_not_supported",
        "structured_output_not_supported",
        "logprobs_not_supported",
        "not_reasoning",
        "reasoning_always_on",
        "too_many_images",
    }
)
ENVELOPE_KEYS = {"message", "type", "param", "code"}

seen: Counter[str] = Counter()  # "operation status" -> answers, reported when the module ends


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, str]]:
    """A gateway of its own with a fake engine of its own: the fuzzer may leave either in any state."""
    upstream = start_fake_upstream()
    home: Path = tmp_path_factory.mktemp("fuzz")
    # No extra fields: the fake's `mock` could make it hang; the document is the whole contract.
    gateway = start_gateway(home, catalog_for(upstream.url, chat_quota=10**12), {"MESHGATE_EXTRA_FIELDS": ""})
    try:
        yield gateway, gateway.new_account("fuzz")[1]
    finally:
        total = sum(seen.values())
        print(f"\nschemathesis: {total} requests, seed {SEED}, {EXAMPLES} examples per operation and key mode")
        for line, count in sorted(seen.items()):
            print(f"  {line}: {count}")
        assert gateway.process is not None
        stop(gateway.process)
        stop(upstream.process)


def focused(document: dict[str, Any]) -> dict[str, Any]:
    """The published document with model names the catalog has, so requests get past routing."""
    schemas = {
        "/chat/completions": CHAT_MODELS,
        "/completions": CHAT_MODELS,
        "/embeddings": EMBEDDING_MODELS,
    }
    for path, models in schemas.items():
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = {"enum": models}
    model = document["paths"]["/models/{model}"]["parameters"][0]
    model["schema"] = {"enum": [*CHAT_MODELS, *EMBEDDING_MODELS, "no/such-model"]}
    return document


def test_the_gateway_serves_the_document_fuzzed_here(live: tuple[LiveGateway, str]) -> None:
    response = httpx.get(f"http://127.0.0.1:{live[0].port}/openapi.json")
    assert response.status_code == 200 and response.content == DOCUMENT_JSON


def error_of(response: Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the OpenAI envelope: {response.text[:500]}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ENVELOPE_KEYS, f"not the OpenAI envelope: {response.text[:500]}"
    assert isinstance(error["message"], str) and error["message"], response.text[:500]
    return error


def openai_envelope(ctx: Any, response: Response, case: Case) -> bool | None:
    """Every error is `{"error": {message, type, param, code}}` as JSON, and never a 5xx of the gateway's own."""
    seen[f"{case.operation.label} {response.status_code}"] += 1
    assert response.status_code != 500, f"the gateway failed: {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
        error_of(response)
    return None


def validation_agrees(ctx: Any, response: Response, case: Case) -> bool | None:
    """What the document allows is refused only for what a schema cannot know; what it forbids is refused."""
    meta = case.meta
    if meta is None:
        return None
    if meta.generation.mode.is_positive:
        if response.status_code == 400:
            error = error_of(response)
            assert error["code"] in SEMANTIC_400, f"validation refused a request the document allows: {error}"
        elif 400 < response.status_code < 500:
            assert response.status_code in (401, 404, 429), response.text[:500]
    # What the document forbids: schemathesis' own negative_data_rejection expects a 4xx.
    return None


def without_a_key(ctx: Any, response: Response, case: Case) -> bool | None:
    """No answer to a request without a valid key is a success."""
    assert response.status_code >= 400, f"answered {response.status_code} without a key: {response.text[:300]}"
    return None


CHECKS = [openai_envelope, validation_agrees]
# Our own positive check replaces schemathesis': a valid request may still meet the context or the quota.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]

# Built here, not from a fixture: schemathesis' lazy loader does not run on pytest 9 (it sets
# `Node._nodeid`); the test above holds this document to the one the gateway serves.
schema = schemathesis.openapi.from_dict(focused(copy.deepcopy(DOCUMENT)), config=SchemathesisConfig(seed=SEED))
# Without a key every answer is a 401: a sample of the fuzzing phase is enough, not every boundary case.
unauthenticated = schemathesis.openapi.from_dict(
    focused(copy.deepcopy(DOCUMENT)), config=SchemathesisConfig(seed=SEED + 1)
)
unauthenticated.config.phases.coverage.enabled = False


@schema.parametrize()
@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_with_a_key(case: Case, live: tuple[LiveGateway, str]) -> None:
    gateway, key = live
    case.call_and_validate(
        base_url=gateway.base_url,
        headers={"Authorization": f"Bearer {key}"},
        additional_checks=CHECKS,
        excluded_checks=EXCLUDED,
        timeout=30,
    )


@unauthenticated.parametrize()
@seed(SEED + 1)
@settings(
    max_examples=max(EXAMPLES // 4, 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_without_a_key(case: Case, live: tuple[LiveGateway, str]) -> None:
    case.call_and_validate(
        base_url=live[0].base_url,
        additional_checks=[*CHECKS, without_a_key],
        excluded_checks=EXCLUDED,
        timeout=30,
    )
