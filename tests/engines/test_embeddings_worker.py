"""The sentence-transformers embeddings worker with the real all-MiniLM-L6-v2, via the openai SDK."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx
import numpy as np
import openai
import pytest

from meshgate.engines.builtin import minilm_folder
from tests.engines.conftest import EMBED_NAME, RunningWorker

QUERY = "What is the capital of France?"
PARIS = "Paris is the capital of France."
BANANAS = "Bananas are yellow."


@pytest.fixture(scope="module")
def client(embed_worker: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=embed_worker.url, api_key="unused", max_retries=0)


def test_health_and_models(embed_worker: RunningWorker, client: openai.OpenAI) -> None:
    assert httpx.get(f"{embed_worker.root}/health").status_code == 200
    assert [m.id for m in client.models.list().data] == [EMBED_NAME]


def test_dimensions_and_semantic_ranking(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=EMBED_NAME, input=[QUERY, PARIS, BANANAS])
    assert r.model == EMBED_NAME
    assert [d.index for d in r.data] == [0, 1, 2]
    q, paris, bananas = (np.array(d.embedding) for d in r.data)
    assert q.shape == (384,)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cos(q, paris) > cos(q, bananas) + 0.2
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-3)  # normalised, like OpenAI's


def test_usage_counts_model_tokens(client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    texts = [QUERY, "A somewhat longer sentence, with punctuation; and more words!"]
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts)  # [CLS] ... [SEP] included
    r = client.embeddings.create(model=EMBED_NAME, input=texts)
    assert r.usage.prompt_tokens == expected
    assert r.usage.total_tokens == expected


def test_base64_equals_float(embed_worker: RunningWorker) -> None:
    def get(fmt: str) -> object:
        body = {"model": EMBED_NAME, "input": PARIS, "encoding_format": fmt}
        r = httpx.post(f"{embed_worker.url}/embeddings", json=body)
        assert r.status_code == 200
        return r.json()["data"][0]["embedding"]

    floats = np.array(get("float"), dtype=np.float32)
    encoded = get("base64")
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.shape == (384,)
    np.testing.assert_allclose(decoded, floats, rtol=1e-6, atol=1e-7)


def test_single_string_and_dimensions_equal_native(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=EMBED_NAME, input=PARIS, dimensions=384)
    assert len(r.data) == 1 and len(r.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBED_NAME, "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": EMBED_NAME, "input": [1, 2, 3]}, 400, "input"),
        ({"model": EMBED_NAME, "input": []}, 400, "input"),
        ({"model": EMBED_NAME, "input": ""}, 400, "input"),
        ({"model": EMBED_NAME, "input": None}, 400, "input"),
        ({"model": EMBED_NAME, "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": EMBED_NAME, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(
    embed_worker: RunningWorker, body: dict[str, object], status: int, param: str
) -> None:
    r = httpx.post(f"{embed_worker.url}/embeddings", json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]


def test_malformed_json_and_unknown_route(embed_worker: RunningWorker) -> None:
    r = httpx.post(f"{embed_worker.url}/embeddings", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(f"{embed_worker.url}/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{embed_worker.url}/embeddings")
    assert r.status_code == 405 and "error" in r.json()


def test_concurrent_requests_each_get_their_own_vectors(embed_worker: RunningWorker) -> None:
    # Concurrent requests are micro-batched together; each must still get its own inputs back, in order.
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(24)]

    def one(i: int) -> list[float]:
        r = httpx.post(
            f"{embed_worker.url}/embeddings",
            json={"model": EMBED_NAME, "input": [texts[i], texts[(i + 1) % 24]]},
            timeout=60,
        )
        data = r.json()["data"]
        return [data[0]["embedding"], data[1]["embedding"]]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    alone = httpx.post(f"{embed_worker.url}/embeddings", json={"model": EMBED_NAME, "input": texts}).json()
    expected = np.array([d["embedding"] for d in alone["data"]])
    for i, (first, second) in enumerate(results):
        np.testing.assert_allclose(first, expected[i], atol=1e-5)
        np.testing.assert_allclose(second, expected[(i + 1) % 24], atol=1e-5)
