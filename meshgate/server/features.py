"""What a chat request asks of its model, checked against the catalog and put in the engine's terms.

Runs in the handler after the route is known and before admission: a model that lacks a
feature the request uses (images, tools, structured output, logprobs, a reasoning effort)
is refused with a 400 naming the parameter, before any quota is held or an engine called.
Then the gateway's own fields become the engine's: `reasoning.effort` is sent as
`reasoning_effort`, effort "none" also turns thinking off in the chat template, and the
local llama.cpp worker gets vLLM's `guided_json` as its own `json_schema`.
"""

from __future__ import annotations

from typing import Any

from meshgate.catalog.spec import ModelSpec
from meshgate.protocol.errors import ApiError, invalid_request
from meshgate.protocol.features import Needs
from meshgate.server.reasoning import ReasoningShaper

# Constrained decoding llama.cpp's server has no equivalent for (it takes json_schema and GBNF `grammar`).
_NOT_ON_LLAMACPP = ("guided_regex", "guided_choice", "guided_grammar", "structural_tag")


def _lacks(spec: ModelSpec, what: str, param: str | None, code: str) -> ApiError:
    return invalid_request(f"The model `{spec.id}` does not support {what}.", param=param, code=code)


def check_capabilities(spec: ModelSpec, needs: Needs, body: dict[str, Any]) -> None:
    """400 for a feature the model's catalog entry does not have."""
    caps = spec.capabilities
    if needs.images and not caps.vision:
        raise _lacks(spec, "images (it is not a vision model)", needs.first_image, "images_not_supported")
    if needs.tools and not caps.tools:
        raise _lacks(spec, "tool calling", needs.tools, "tools_not_supported")
    if needs.structured and not caps.json:
        raise _lacks(spec, "structured output", needs.structured, "structured_output_not_supported")
    if needs.logprobs and not caps.logprobs:
        raise _lacks(spec, "logprobs", "logprobs", "logprobs_not_supported")
    if needs.effort is not None:
        if not caps.reasoning:
            raise _lacks(spec, "a reasoning effort (it is not a reasoning model)", needs.effort_param, "not_reasoning")
        if needs.effort == "none" and caps.reasoning == "always":
            raise invalid_request(
                f"The model `{spec.id}` always reasons: a reasoning effort of 'none' is not available; "
                "use low, medium or high.",
                param=needs.effort_param,
                code="reasoning_always_on",
            )
    if _is_llamacpp(spec) and needs.structured:
        for name in _NOT_ON_LLAMACPP:
            if body.get(name) is not None:
                raise _lacks(
                    spec,
                    f"'{name}' (its llama.cpp engine takes response_format, json_schema or grammar)",
                    name,
                    "structured_output_not_supported",
                )


def prepare(body: dict[str, Any], spec: ModelSpec, needs: Needs) -> None:
    """Turn the gateway's own fields into what the engine understands, in place."""
    body.pop("reasoning_content", None)
    body.pop("reasoning", None)
    if needs.effort is not None:
        body["reasoning_effort"] = needs.effort
        if needs.effort == "none":
            # Hybrid models (Qwen3, DeepSeek V3.1, GLM…) turn thinking off in their template.
            kwargs = dict(body.get("chat_template_kwargs") or {})
            kwargs.setdefault("enable_thinking", False)
            body["chat_template_kwargs"] = kwargs
    if needs.structured and _is_llamacpp(spec):
        _llamacpp_structured(body)


def _llamacpp_structured(body: dict[str, Any]) -> None:
    """vLLM's JSON-schema fields in llama.cpp's terms: its server reads `json_schema`."""
    schema = body.pop("guided_json", None)
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict) and outputs.get("json") is not None:
        schema = body.pop("structured_outputs")["json"]
    elif outputs is not None:
        raise invalid_request(
            "this model's llama.cpp engine takes only structured_outputs.json; use response_format or grammar",
            param="structured_outputs",
            code="structured_output_not_supported",
        )
    if schema is not None and "json_schema" not in body:
        body["json_schema"] = schema  # a schema given as a JSON string is llama.cpp's to parse


def normalize_history(body: dict[str, Any]) -> None:
    """Assistant messages sent back with their reasoning carry it under both names (templates read
    `reasoning_content`, newer vLLM `reasoning`)."""
    for message in body["messages"]:
        if message.get("role") != "assistant":
            continue
        has_content, has_reasoning = "reasoning_content" in message, "reasoning" in message
        if has_content and not has_reasoning:
            message["reasoning"] = message["reasoning_content"]
        elif has_reasoning and not has_content:
            message["reasoning_content"] = message["reasoning"]


def shaper_for(spec: ModelSpec, needs: Needs | None) -> ReasoningShaper | None:
    """The answer shaper of a reasoning model's request; None for other models (nothing to do)."""
    reasoning = spec.capabilities.reasoning
    if not reasoning:
        return None
    show = needs is None or needs.show_reasoning
    return ReasoningShaper(show=show, split=spec.capabilities.think_tags, always=reasoning == "always")


def _is_llamacpp(spec: ModelSpec) -> bool:
    return spec.local is not None and spec.local.engine == "llama.cpp"
