"""Request features beyond plain text: reasoning, tools, structured output, logprobs and images.

Each field's shape is checked here (400 naming the field, as vLLM's validators do), and
`needs()` tells what the request asks of the model, so the handler can refuse a model that
lacks it (`server/features.py`) before any upstream work. A plain request pays nothing: the
checks run only for the fields present, and `needs()` only when one of `FEATURE_FIELDS` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshgate.protocol.errors import invalid_request

# reasoning_effort: OpenAI's values and vLLM's (`max` is DeepSeek's own); reasoning.effort: the reference's.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
EFFORTS = ("none", "low", "medium", "high")
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "structural_tag")
TOOL_CHOICES = ("none", "auto", "required")
IMAGE_PARTS = frozenset({"image_url", "input_image"})  # both carry `image_url`: {"url": ...} or the URL
MAX_IMAGES = 10  # per request: the reference's limit
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # per image (a data URL's decoded size): the reference's limit
# Constrained decoding, by engine: vLLM's fields and llama.cpp's; all need a model with `json`.
GUIDED_FIELDS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "structural_tag",
    "json_schema",
    "grammar",
)
FEATURE_FIELDS = frozenset(
    {
        "reasoning_content",
        "reasoning",
        "reasoning_effort",
        "tools",
        "functions",
        "tool_choice",
        "response_format",
        "logprobs",
        "top_logprobs",
        *GUIDED_FIELDS,
    }
)


@dataclass(slots=True)
class Needs:
    """What a request asks of the model beyond text; `None` fields are not asked for."""

    show_reasoning: bool = True  # the reference's `reasoning_content` flag (default on)
    effort: str | None = None  # reasoning effort, from `reasoning_effort` or `reasoning.effort`
    effort_param: str | None = None  # the field that set it
    tools: str | None = None  # the field that needs tool calling
    structured: str | None = None  # the field that needs structured output
    logprobs: bool = False
    images: int = 0
    first_image: str | None = None  # where the first image is (the `param` of a refusal)


def needs(body: dict[str, Any], images: int = 0, first_image: str | None = None) -> Needs | None:
    """What the request needs (None for a plain text request). Shapes are checked already."""
    if not images and FEATURE_FIELDS.isdisjoint(body):
        return None
    result = Needs(images=images, first_image=first_image)
    if body.get("reasoning_content") is False:
        result.show_reasoning = False
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        result.effort, result.effort_param = reasoning["effort"], "reasoning.effort"
    if body.get("reasoning_effort") is not None:
        result.effort, result.effort_param = body["reasoning_effort"], "reasoning_effort"
    for name in ("tools", "functions"):
        if body.get(name):
            result.tools = name
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        result.structured = "response_format"
    for name in GUIDED_FIELDS:
        if body.get(name) is not None:
            result.structured = name
    result.logprobs = body.get("logprobs") is True
    return result


# ---------------------------------------------------------------- field checks (body, name)


def check_reasoning_flag(body: dict[str, Any], name: str) -> None:
    if body[name] is not None and not isinstance(body[name], bool):
        raise invalid_request(f"'{name}' must be a boolean (whether the answer carries the reasoning)", param=name)


def check_reasoning(body: dict[str, Any], name: str) -> None:
    value = body[name]
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_request('\'reasoning\' must be an object like {"effort": "low"}', param=name)
    for key in value:
        if key != "effort":
            raise invalid_request(f"'reasoning.{str(key)[:64]}' is not supported; use reasoning.effort", param=name)
    effort = value.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise invalid_request(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}", param="reasoning.effort")


def check_reasoning_effort(body: dict[str, Any], name: str) -> None:
    value = body[name]
    if value is not None and value not in REASONING_EFFORTS:
        raise invalid_request(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}", param=name)


def check_tools(body: dict[str, Any], name: str) -> None:
    tools = body[name]
    if tools is None:
        return
    if name == "tools" and tools == []:
        raise invalid_request("'tools' must not be an empty array: send at least one tool or none", param=name)
    for i, tool in enumerate(tools):
        function = tool.get("function") if name == "tools" else tool
        if name == "tools" and tool.get("type", "function") != "function":
            raise invalid_request(f"{name}[{i}].type must be 'function'", param=f"{name}[{i}].type")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            where = f"{name}[{i}].function.name" if name == "tools" else f"{name}[{i}].name"
            raise invalid_request(f"{where} is required and must be a non-empty string", param=where)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid_request(f"the parameters of {name}[{i}] must be a JSON Schema object", param=f"{name}[{i}]")


def check_tool_choice(body: dict[str, Any], name: str) -> None:
    """vLLM's rules: a tool choice other than none needs tools; a named one is an object with a name."""
    choice = body[name]
    if choice is None or choice == "none":
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise invalid_request(f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)} or a named tool", param=name)
    elif isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid_request(
                'a named tool_choice is {"type": "function", "function": {"name": "my_function"}}', param=name
            )
    else:
        raise invalid_request("'tool_choice' must be a string or an object", param=name)
    if not body.get("tools"):  # a named tool that is not among them is the engine's to refuse (vLLM does)
        raise invalid_request("'tool_choice' needs 'tools'", param=name)


def check_response_format(body: dict[str, Any], name: str) -> None:
    fmt = body[name]
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid_request("'response_format' must be an object with a string 'type'", param=name)
    kind = fmt["type"]
    if kind not in RESPONSE_FORMATS:
        raise invalid_request(
            f"'response_format.type' must be one of {', '.join(RESPONSE_FORMATS)}", param="response_format.type"
        )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid_request(
                "'response_format.json_schema' is required with type json_schema: an object with 'name' and 'schema'",
                param="response_format.json_schema",
            )
        if "name" in spec and not isinstance(spec["name"], str):
            raise invalid_request("'response_format.json_schema.name' must be a string", param="response_format")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict | bool):
            raise invalid_request(
                "'response_format.json_schema.schema' must be a JSON Schema object",
                param="response_format.json_schema.schema",
            )


def check_top_logprobs(body: dict[str, Any], name: str) -> None:
    """vLLM's rule (and OpenAI's): top_logprobs only with logprobs on. Its range is checked in requests.py."""
    value = body[name]
    if value and body.get("logprobs") is not True:
        raise invalid_request("when using 'top_logprobs', 'logprobs' must be set to true", param=name)


FEATURE_CHECKS = {
    "reasoning_content": check_reasoning_flag,
    "reasoning": check_reasoning,
    "reasoning_effort": check_reasoning_effort,
    "tools": check_tools,
    "functions": check_tools,
    "tool_choice": check_tool_choice,
    "response_format": check_response_format,
}


# ---------------------------------------------------------------- images


def image_part(part: dict[str, Any], i: int, j: int) -> None:
    """An image content part: a URL that is a data URL (at most MAX_IMAGE_BYTES decoded) or http(s).

    An http URL is not fetched (the engine fetches it, or refuses it); a data URL's size is
    computed from its base64 length, without decoding it.
    """
    where = f"messages[{i}].content[{j}]"
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise invalid_request(f"{where}.image_url.url is required and must be a string", param=f"{where}.image_url")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise invalid_request(
                f"{where}: an image data URL must be data:<type>;base64,<data>", param=f"{where}.image_url"
            )
        size = decoded_size(data)
        if size > MAX_IMAGE_BYTES:
            raise invalid_request(
                f"{where}: the image is {size} bytes; images may be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
                param=f"{where}.image_url",
                code="image_too_large",
            )
    elif not url.startswith(("http://", "https://")):
        raise invalid_request(f"{where}: an image URL must be an http(s) or a data URL", param=f"{where}.image_url")


def decoded_size(data: str) -> int:
    """Bytes a base64 text (without whitespace, padded or not) decodes to, without decoding it."""
    padding = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return (len(data) * 3) // 4 - padding
