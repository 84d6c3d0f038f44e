"""The pieces under the feature tests: the <think> splitter on every cut, data URL sizes, catalog capabilities."""

from __future__ import annotations

import base64
import itertools
import tomllib
from typing import Any

import pytest

from meshgate.catalog.loader import CatalogError, parse_catalog
from meshgate.catalog.presets import io_intelligence_models, local_default_models
from meshgate.catalog.toml_out import catalog_toml
from meshgate.protocol.features import decoded_size
from meshgate.server.reasoning import ReasoningShaper, split_think

THOUGHT, ANSWER = "Let me see: 6 * 7 < 50", "It is 42."


def _stream(shaper: ReasoningShaper, pieces: list[str]) -> tuple[str, str]:
    reasoning = content = ""
    for i, piece in enumerate(pieces):
        choices: list[Any] = [
            {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if i == len(pieces) - 1 else None}
        ]
        shaper.stream(choices)
        delta = choices[0]["delta"]
        assert delta.get("reasoning") == delta.get("reasoning_content")
        reasoning += delta.get("reasoning_content") or ""
        content += delta.get("content") or ""
    return reasoning, content


@pytest.mark.parametrize(
    ("text", "always"),
    [
        (f"<think>{THOUGHT}</think>\n\n{ANSWER}", False),
        (f"\n<think>{THOUGHT}</think>{ANSWER}", True),
        (f"{THOUGHT}</think>\n{ANSWER}", True),
    ],
)
def test_think_tags_are_split_wherever_the_events_cut_them(text: str, always: bool) -> None:
    assert split_think(text, always) == (THOUGHT, ANSWER)
    for a, b in itertools.combinations(range(1, len(text)), 2):  # every cut into three events
        shaper = ReasoningShaper(show=True, split=True, always=always)
        assert _stream(shaper, [text[:a], text[a:b], text[b:]]) == (THOUGHT, ANSWER), (a, b)


def test_answers_without_tags_pass_unchanged() -> None:
    assert split_think(ANSWER, True) == (None, ANSWER)
    shaper = ReasoningShaper(show=True, split=True, always=False)
    assert _stream(shaper, ["It ", "is ", "42."]) == ("", ANSWER)
    assert _stream(ReasoningShaper(show=True, split=True, always=False), ["<b>bold</b>"]) == ("", "<b>bold</b>")


def test_hidden_reasoning_is_removed_from_answers_and_deltas() -> None:
    shaper = ReasoningShaper(show=False, split=True, always=False)
    answer: Any = {"choices": [{"message": {"content": f"<think>{THOUGHT}</think>{ANSWER}", "reasoning": "x"}}]}
    assert shaper.answer(answer) and answer["choices"][0]["message"] == {"content": ANSWER}
    assert _stream(ReasoningShaper(show=False, split=True, always=False), [f"<think>{THOUGHT}</think>", ANSWER]) == (
        "",
        ANSWER,
    )


def test_engine_fields_get_both_names() -> None:
    shaper = ReasoningShaper(show=True, split=False, always=False)
    answer: Any = {"choices": [{"message": {"content": ANSWER, "reasoning_content": THOUGHT}}]}
    assert shaper.answer(answer)
    assert answer["choices"][0]["message"]["reasoning"] == THOUGHT
    plain: Any = {"choices": [{"message": {"content": ANSWER}}]}
    assert not shaper.answer(plain)  # nothing to do: the engine's bytes are sent as they came


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000, 20 * 1024 * 1024])
def test_data_url_sizes_without_decoding(size: int) -> None:
    data = base64.b64encode(b"\1" * size).decode()
    assert decoded_size(data) == size and decoded_size(data.rstrip("=")) == size


def _entry(**extra: Any) -> dict[str, Any]:
    return {"models": [{"id": "m", "context_length": 100, "upstreams": [{"url": "http://h/v1"}], **extra}]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"reasoning": "sometimes"}, "reasoning must be"),
        ({"tools": "yes"}, "tools must be true or false"),
        ({"image_tokens": 0}, "image_tokens must be"),
        ({"think_tags": True}, "think_tags needs reasoning"),
        ({"kind": "embedding", "tools": True}, "chat models only"),
        ({"local": {"engine": "llama.cpp", "path": "x.gguf"}, "vision": True}, "takes no images"),
    ],
)
def test_the_loader_checks_capabilities(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(_entry(**extra))


def test_presets_declare_capabilities_and_survive_a_round_trip() -> None:
    specs = io_intelligence_models("http://h/v1") + local_default_models()
    by_id = {spec.id: spec.capabilities for spec in specs}
    assert by_id["deepseek-ai/DeepSeek-R1-0528"].reasoning == "always"
    assert by_id["Qwen/Qwen2.5-VL-32B-Instruct"].vision
    assert (
        by_id["HuggingFaceTB/SmolLM2-135M-Instruct"].tools and not by_id["HuggingFaceTB/SmolLM2-135M-Instruct"].vision
    )
    again = parse_catalog(tomllib.loads(catalog_toml(specs)))
    assert [spec.capabilities for spec in again] == [spec.capabilities for spec in specs]
