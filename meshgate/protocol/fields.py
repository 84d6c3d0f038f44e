"""Which request fields reach an engine: a reviewed decision per field (docs/fields.md says why).

Every top-level field of a request body is in one of four places:

- **passed**: the gateway checks it (if it cares) and the engine gets it unchanged;
- **dropped**: an OpenAI field the SDKs send that neither the gateway nor the engines use
  (`store`, `metadata`…): removed, so a client written for OpenAI keeps working;
- **refused**: a field that would let a client step around the quota (a length or
  sampling count the gateway does not see) or pick what is the operator's (the engine's
  request id, priority, slot, chat template, adapters, keys): 400 naming it and what to use;
- **unknown**: anything else, 400 as OpenAI answers. An engine ignores a field it does not
  know but obeys one it does, so a field is passed only once someone has read what it does
  in every engine behind the gateway. Operators add their own with `MESHGATE_EXTRA_FIELDS`.

The check is on the hot path: a body whose fields are all passed costs one `issuperset`.
"""

from __future__ import annotations

from typing import Any

from meshgate.protocol.errors import ApiError, invalid_request

# ---------------------------------------------------------------- chat completions

# OpenAI's chat fields the engines use (openai SDK `completion_create_params`).
_OPENAI_CHAT = frozenset(
    {
        "messages",
        "model",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "presence_penalty",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "reasoning_effort",
        "function_call",  # deprecated function calling: engines that know it use it, others ignore it
        "functions",
    }
)

# vLLM's extensions of both ChatCompletionRequest and CompletionRequest that only shape sampling or
# output within max_tokens.
_VLLM_SAMPLING = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",  # harmless once max_tokens is always the gateway's
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",  # can only shorten the prompt
        "prompt_logprobs",  # checked: 0..20 (vLLM's -1 is the whole vocabulary per prompt token)
        "allowed_token_ids",
        "bad_words",
        "add_special_tokens",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "structural_tag",
        "return_tokens_as_token_ids",
        "return_token_ids",
        "cache_salt",
    }
)

# ... and those of ChatCompletionRequest alone.
_VLLM_CHAT = _VLLM_SAMPLING | frozenset(
    {
        "echo",
        "add_generation_prompt",
        "continue_final_message",
        "documents",
        "chat_template_kwargs",  # checked: no keys that change what the template call does
        "include_reasoning",
        "thinking_token_budget",  # caps the reasoning within max_tokens
        "max_repetition_pattern_size",
        "min_repetition_pattern_size",
        "repetition_min_count",
    }
)

# llama.cpp server sampling options (tools/server/README.md), all within n_predict = max_tokens.
_LLAMACPP_CHAT = frozenset(
    {
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "dry_multiplier",
        "dry_base",
        "dry_allowed_length",
        "dry_penalty_last_n",
        "dry_sequence_breakers",
        "xtc_probability",
        "xtc_threshold",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "dynatemp_range",
        "dynatemp_exponent",
        "top_n_sigma",
        "min_keep",
        "samplers",
        "grammar",
        "json_schema",
        "t_max_predict_ms",  # can only stop generation earlier
        "reasoning_format",
    }
)

# The gateway's own: read by it and never sent on (server/features.py turns them into engine fields).
_GATEWAY_CHAT = frozenset(
    {
        "reasoning_content",  # the reference's switch: answers carry the reasoning or not (default on)
        "reasoning",  # the reference's {"effort": ...}: sent on as reasoning_effort
    }
)

CHAT_PASSED = _OPENAI_CHAT | _VLLM_CHAT | _LLAMACPP_CHAT | _GATEWAY_CHAT

# OpenAI fields no engine behind the gateway uses: accepted, and not sent on.
CHAT_DROPPED = frozenset(
    {
        "audio",
        "modalities",
        "metadata",
        "moderation",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",  # the gateway has no tiers; some engines map it to a priority
        "store",
        "verbosity",
        "web_search_options",
    }
)

# ---------------------------------------------------------------- embeddings

EMBEDDINGS_PASSED = frozenset(
    {
        "model",
        "input",
        "encoding_format",
        "dimensions",
        "user",
        # vLLM pooling extensions: how the input is tokenized and the vector written
        "truncate_prompt_tokens",
        "truncation_side",
        "add_special_tokens",
        "normalize",
        "use_activation",
        "embed_dtype",
        "endianness",
        "cache_salt",
    }
)
EMBEDDINGS_DROPPED: frozenset[str] = frozenset()

# ---------------------------------------------------------------- legacy completions

# OpenAI's completions fields (openai SDK `completion_create_params`), less `best_of` (refused, locked).
_OPENAI_COMPLETIONS = frozenset(
    {
        "model",
        "prompt",
        "echo",  # checked: a boolean; refused for engines that cannot echo (llama.cpp)
        "suffix",  # checked: a string; refused unless the catalog says the engine takes it
        "frequency_penalty",
        "logit_bias",
        "logprobs",  # checked: an integer 0..20 here, vLLM's default max_logprobs
        "max_tokens",  # checked: 16 when left out, as OpenAI and vLLM
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "user",
    }
)

# vLLM's CompletionRequest extensions: as for chat, sampling and output within max_tokens.
_VLLM_COMPLETIONS = _VLLM_SAMPLING | {"response_format"}

COMPLETIONS_PASSED = (
    _OPENAI_COMPLETIONS | _VLLM_COMPLETIONS | (_LLAMACPP_CHAT - {"reasoning_format"})  # no chat template here
)
COMPLETIONS_DROPPED: frozenset[str] = frozenset()

# ---------------------------------------------------------------- refused

_USE_MAX_TOKENS = "use max_tokens (or max_completion_tokens): the gateway reserves quota for that bound only"
_USE_N = "use n: the gateway charges for every sequence an engine generates"
_OPERATORS = "it is the operator's setting, not the request's"

# Fields that defeat the exact quota: even MESHGATE_EXTRA_FIELDS cannot pass them.
LOCKED = frozenset(
    {
        "n_predict",
        "max_new_tokens",
        "max_length",
        "max_output_tokens",
        "min_tokens",
        "min_new_tokens",
        "best_of",
        "use_beam_search",
        "n_cmpl",
        "num_return_sequences",
    }
)

# field -> what to do instead; the same names mean the same things at both endpoints.
REFUSED: dict[str, str] = {
    # length: an engine obeys these over max_tokens (llama.cpp: n_predict) or past it (min_tokens)
    "n_predict": f"llama.cpp lets it override max_tokens; {_USE_MAX_TOKENS}",
    "max_new_tokens": _USE_MAX_TOKENS,
    "max_length": _USE_MAX_TOKENS,
    "max_output_tokens": _USE_MAX_TOKENS,
    "min_tokens": f"it makes the engine generate past its stop conditions; {_USE_MAX_TOKENS}",
    "min_new_tokens": f"it makes the engine generate past its stop conditions; {_USE_MAX_TOKENS}",
    # sampling counts: sequences generated beyond the n that are returned and charged
    "best_of": _USE_N,
    "use_beam_search": f"beam search generates more sequences than it returns; {_USE_N}",
    "n_cmpl": _USE_N,
    "num_return_sequences": _USE_N,
    "n_probs": "use logprobs and top_logprobs",
    # the engine's own bookkeeping
    "request_id": "the gateway assigns request ids",
    "priority": f"scheduling priority: {_OPERATORS}",
    "id_slot": "llama.cpp slots are the engine's to assign",
    "slot_id": "llama.cpp slots are the engine's to assign",
    "n_keep": f"llama.cpp context shifting: {_OPERATORS}",
    "n_discard": f"llama.cpp context shifting: {_OPERATORS}",
    "cache_prompt": f"the engine's prompt cache: {_OPERATORS}",
    "n_cache_reuse": f"the engine's prompt cache: {_OPERATORS}",
    "kv_transfer_params": "disaggregated-serving internals of the engine",
    "response_fields": "the answer's shape is the gateway's, usage included",
    # what the model is: the operator's
    "chat_template": "the model's chat template is fixed; use chat_template_kwargs for its options",
    "lora": "adapters are chosen by the model name: use model",
    "mm_processor_kwargs": "it changes how many tokens an image becomes; the gateway sends the engine's defaults",
    "media_io_kwargs": "it changes how media is decoded; the gateway sends the engine's defaults",
    "logits_processors": "it names code for the engine to load",
    "vllm_xargs": f"engine extension arguments: {_OPERATORS} (MESHGATE_EXTRA_FIELDS)",
    # credentials and destinations
    "api_key": "send the key in the Authorization header",
    "api_base": "the gateway routes by model",
    "base_url": "the gateway routes by model",
}
CHAT_REFUSED = REFUSED
COMPLETIONS_REFUSED: dict[str, str] = {
    **REFUSED,
    "messages": "use prompt (messages belong to /chat/completions)",
    "prompt_embeds": "prompt embeddings are charged as tokens the gateway cannot count; send prompt",
}
EMBEDDINGS_REFUSED: dict[str, str] = {
    **REFUSED,
    "messages": "use input (vLLM would embed a chat instead, with a template)",
}

# Keys of chat_template_kwargs that change what the template call does, not what the template
# sees (HF `apply_chat_template` arguments; vLLM advisories GHSA-6fvq-23cw-5628, GHSA-69j4-grxj-j64p).
TEMPLATE_CALL_KEYS = frozenset(
    {
        "chat_template",
        "conversation",
        "tokenize",
        "tokenizer_kwargs",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
    }
)

_SHOWN = 64  # a field name in a message is cut here: names are the client's, any length


def check_fields(
    body: dict[str, Any],
    passed: frozenset[str],
    dropped: frozenset[str],
    refused: dict[str, str],
    extra: frozenset[str] = frozenset(),
) -> None:
    """Refuse what may not reach the engine and remove what is dropped, in place."""
    if passed.issuperset(body):
        return  # the common request: nothing else to look at
    drop: list[str] = []
    for name in body:
        if name in passed:
            continue
        if name in LOCKED:
            raise unsupported(name, refused[name])
        if name in extra:
            continue
        if name in dropped:
            drop.append(name)
            continue
        hint = refused.get(name)
        if hint is not None:
            raise unsupported(name, hint)
        raise invalid_request(
            f"Unrecognized request argument supplied: {shown(name)}", param=shown(name), code="unknown_parameter"
        )
    for name in drop:
        del body[name]


def unsupported(name: str, hint: str) -> ApiError:
    return invalid_request(
        f"Unsupported parameter: '{shown(name)}' is not accepted by this gateway: {hint}.",
        param=shown(name),
        code="unsupported_parameter",
    )


def shown(name: str) -> str:
    return name if len(name) <= _SHOWN else name[:_SHOWN] + "…"
