"""The per-field policy: what reaches an engine, what is dropped, what is refused and why."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from openai.types import embedding_create_params
from openai.types.chat import completion_create_params

from meshgate.protocol.errors import ApiError
from meshgate.protocol.fields import (
    CHAT_DROPPED,
    CHAT_PASSED,
    CHAT_REFUSED,
    EMBEDDINGS_DROPPED,
    EMBEDDINGS_PASSED,
    EMBEDDINGS_REFUSED,
    LOCKED,
    REFUSED,
)
from meshgate.protocol.requests import parse_chat, parse_embeddings

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, **fields}


def refusal(body: dict[str, Any], extra: frozenset[str] = frozenset(), embeddings: bool = False) -> ApiError:
    with pytest.raises(ApiError) as info:
        (parse_embeddings if embeddings else parse_chat)(body, extra)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


def test_the_reproduction_is_refused_naming_n_predict() -> None:
    # llama.cpp let n_predict override max_tokens: 600 tokens generated, 35 charged
    error = refusal(chat(max_tokens=1, n_predict=600, ignore_eos=True))
    assert error.param == "n_predict" and error.code == "unsupported_parameter"
    assert "use max_tokens" in error.message


@pytest.mark.parametrize("name", sorted(CHAT_REFUSED))
def test_every_refused_chat_field_is_400_naming_it(name: str) -> None:
    error = refusal(chat(**{name: 1}))
    assert error.param == name and error.code == "unsupported_parameter"
    assert CHAT_REFUSED[name] in error.message


@pytest.mark.parametrize("name", sorted(EMBEDDINGS_REFUSED))
def test_every_refused_embeddings_field_is_400_naming_it(name: str) -> None:
    error = refusal({"model": "m", "input": "x", name: 1}, embeddings=True)
    assert error.param == name and error.code == "unsupported_parameter"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("n_predict", "use max_tokens"),
        ("max_new_tokens", "use max_tokens"),
        ("min_tokens", "use max_tokens"),
        ("best_of", "use n"),
        ("use_beam_search", "use n"),
        ("n_cmpl", "use n"),
        ("n_probs", "use logprobs"),
        ("chat_template", "chat_template_kwargs"),
        ("api_key", "Authorization header"),
        ("lora", "use model"),
    ],
)
def test_refusals_say_what_to_use_instead(name: str, hint: str) -> None:
    assert hint in refusal(chat(**{name: 1})).message


def test_messages_at_embeddings_is_refused_with_use_input() -> None:
    error = refusal({"model": "m", "input": "x", "messages": MESSAGES}, embeddings=True)
    assert error.param == "messages" and "use input" in error.message


def test_unknown_fields_are_400_as_openai_answers() -> None:
    error = refusal(chat(max_token=5))  # a typo would otherwise run with the whole remaining quota
    assert error.param == "max_token" and error.code == "unknown_parameter"
    assert error.message == "Unrecognized request argument supplied: max_token"
    assert refusal({"model": "m", "input": "x", "top_k": 1}, embeddings=True).param == "top_k"


def test_a_long_unknown_name_is_cut_in_the_error() -> None:
    error = refusal(chat(**{"x" * 10_000: 1}))
    assert error.param is not None and len(error.param) < 100 and len(error.message) < 200


@pytest.mark.parametrize(
    "fields",
    [
        {"top_k": 7, "min_p": 0.1, "repetition_penalty": 1.1},
        {"guided_json": {"type": "object"}, "guided_regex": "a+", "guided_choice": ["a", "b"]},
        {"structured_outputs": {"json": {"type": "object"}}},
        {"chat_template_kwargs": {"enable_thinking": False}},
        {"ignore_eos": True, "stop_token_ids": [2], "skip_special_tokens": False, "cache_salt": "s"},
        {"mirostat": 2, "dry_multiplier": 0.8, "samplers": ["top_k"], "grammar": "root ::= 'a'"},
    ],
)
def test_harmless_extensions_pass_unchanged(fields: dict[str, Any]) -> None:
    body = chat(**fields)
    assert parse_chat(dict(body)).body == body


def test_dropped_fields_are_removed_and_the_rest_kept() -> None:
    body = chat(store=True, metadata={"a": "b"}, service_tier="auto", verbosity="low", top_k=3)
    assert parse_chat(body).body == chat(top_k=3)


def test_every_field_the_openai_sdk_sends_is_accepted() -> None:
    sent = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsStreaming))
    assert sent - (CHAT_PASSED | CHAT_DROPPED) == set()
    embedded = set(typing.get_type_hints(embedding_create_params.EmbeddingCreateParams))
    assert embedded - (EMBEDDINGS_PASSED | EMBEDDINGS_DROPPED) == set()


def test_extra_fields_pass_unknown_and_refused_but_never_locked_fields() -> None:
    extra = frozenset({"mock", "priority", "store", *LOCKED})
    body = chat(mock={"delay_ms": 1}, priority=-5, store=True)
    assert parse_chat(dict(body), extra).body == body  # `store` too: the operator wants it passed
    for name in sorted(LOCKED):
        assert refusal(chat(**{name: 10}), extra).param == name


def test_the_lists_are_disjoint_and_locked_fields_are_refused() -> None:
    assert not CHAT_PASSED & CHAT_DROPPED and not CHAT_PASSED & set(CHAT_REFUSED)
    assert not EMBEDDINGS_PASSED & set(EMBEDDINGS_REFUSED)
    assert set(REFUSED) >= LOCKED


# vLLM's ChatCompletionRequest fields (vllm/entrypoints/openai/chat_completion/protocol.py):
# each one is decided, none reaches an engine by default.
VLLM_CHAT_FIELDS = """
messages model frequency_penalty logit_bias logprobs top_logprobs max_tokens max_completion_tokens n
presence_penalty response_format seed stop stream stream_options temperature top_p tools tool_choice
reasoning_effort include_reasoning parallel_tool_calls user use_beam_search top_k min_p repetition_penalty
length_penalty stop_token_ids include_stop_str_in_output ignore_eos min_tokens skip_special_tokens
spaces_between_special_tokens truncate_prompt_tokens prompt_logprobs allowed_token_ids bad_words echo
add_generation_prompt continue_final_message add_special_tokens documents chat_template chat_template_kwargs
mm_processor_kwargs structured_outputs priority request_id logits_processors return_tokens_as_token_ids
return_token_ids cache_salt kv_transfer_params vllm_xargs max_repetition_pattern_size
min_repetition_pattern_size repetition_min_count best_of guided_json guided_regex guided_choice guided_grammar
structural_tag guided_decoding_backend guided_whitespace_pattern
""".split()  # noqa: SIM905 - one line of the protocol file per line here
VLLM_EMBEDDING_FIELDS = """
model input encoding_format dimensions user truncate_prompt_tokens add_special_tokens priority request_id
normalize use_activation embed_dtype endianness mm_processor_kwargs cache_salt truncation_side messages
""".split()  # noqa: SIM905 - one line of the protocol file per line here


def test_every_vllm_field_is_decided() -> None:
    assert set(VLLM_CHAT_FIELDS) - (CHAT_PASSED | set(CHAT_REFUSED)) == set()
    assert set(VLLM_EMBEDDING_FIELDS) - (EMBEDDINGS_PASSED | set(EMBEDDINGS_REFUSED)) == set()
    assert {"request_id", "priority", "chat_template", "min_tokens", "best_of"} <= set(CHAT_REFUSED)


def test_template_call_arguments_in_chat_template_kwargs_are_refused() -> None:
    for key in ("chat_template", "tokenize"):
        error = refusal(chat(chat_template_kwargs={key: "x"}))
        assert error.param == f"chat_template_kwargs.{key}" and error.code == "unsupported_parameter"


def test_docs_fields_md_decides_every_field() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "fields.md").read_text()
    named = set(re.findall(r"`([a-z_]+)`", text))
    listed = CHAT_PASSED | CHAT_DROPPED | EMBEDDINGS_PASSED | set(REFUSED) | set(EMBEDDINGS_REFUSED)
    assert listed - named == set()
