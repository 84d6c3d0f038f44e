"""The OpenAPI 3.1 document of the gateway's endpoints, written as data (no framework).

The request schemas say exactly what `requests.py` accepts: they are built from the same
limits and the same field lists (`fields.py`), so a field that is passed but not checked
is `{}` here (anything) and one that is neither passed nor dropped is not allowed at all.
tests/fuzz holds document and validation together: schemathesis sends what this document
allows, and what it does not, to a live gateway and checks every answer against it.
"""

from __future__ import annotations

from typing import Any

import orjson

from meshgate.protocol.features import EFFORTS, IMAGE_PARTS, REASONING_EFFORTS, RESPONSE_FORMATS, TOOL_CHOICES
from meshgate.protocol.fields import (
    CHAT_DROPPED,
    CHAT_PASSED,
    COMPLETIONS_DROPPED,
    COMPLETIONS_PASSED,
    EMBEDDINGS_DROPPED,
    EMBEDDINGS_PASSED,
    TEMPLATE_CALL_KEYS,
)
from meshgate.protocol.requests import (
    CONTENT_REQUIRED,
    INT64_MAX,
    INT64_MIN,
    MAX_CONTENT_PARTS,
    MAX_EMBEDDING_INPUTS,
    MAX_INT32,
    MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS_VALUE,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_N,
    MAX_PROMPTS,
    MAX_STOP,
    MAX_TOOLS,
    ROLES,
)

Schema = dict[str, Any]

# Every status the gateway answers with an error envelope (server/*: validation, auth, scope,
# routing, method, slow or large requests, quota, header size, engine failures and timeouts).
ERROR_STATUSES: dict[int, str] = {
    400: "The request is invalid (the error's `param` names the field), or does not fit the model's context.",
    401: "No API key, or one that is unknown, revoked or expired.",
    403: "The key may not use this model.",
    404: "No such model or endpoint.",
    405: "The endpoint does not take this method.",
    408: "The request did not arrive in time.",
    413: "The request body is larger than the gateway accepts.",
    429: "The account's or the key's token quota is used up.",
    431: "The request headers are larger than the gateway accepts.",
    502: "The engine failed or answered something that is not a valid answer.",
    503: "No engine is available for the model.",
    504: "The engine did not answer in time.",
}


def _null(kind: str, **limits: Any) -> Schema:
    return {"type": [kind, "null"], **limits}


def _integer(low: int, high: int) -> Schema:
    return _null("integer", minimum=low, maximum=high)


def _number(low: float, high: float) -> Schema:
    return _null("number", minimum=low, maximum=high)


def _object_list(limit: int) -> Schema:
    return _null("array", maxItems=limit, items={"type": "object"})


def _body(properties: Schema, passed: frozenset[str], dropped: frozenset[str], required: list[str]) -> Schema:
    """An object of exactly the fields that are passed or dropped; unchecked ones may hold anything."""
    names = sorted(passed | dropped)
    return {
        "type": "object",
        "required": required,
        "properties": {name: properties.get(name, {}) for name in names},
        "additionalProperties": False,
    }


_IMAGE_URL: Schema = {"type": "string", "pattern": "^(https?://|data:[^,]*;base64,)"}
_CONTENT_PART: Schema = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
    # an image: an http(s) URL (not fetched) or a base64 data URL of at most 20 MB decoded, 10 per request
    "if": {"properties": {"type": {"enum": sorted(IMAGE_PARTS)}}},
    "then": {
        "required": ["image_url"],
        "properties": {
            "image_url": {
                "anyOf": [_IMAGE_URL, {"type": "object", "required": ["url"], "properties": {"url": _IMAGE_URL}}]
            }
        },
    },
}
_CONTENT: Schema = {
    "anyOf": [{"type": "string"}, {"type": "array", "maxItems": MAX_CONTENT_PARTS, "items": _CONTENT_PART}]
}
_MESSAGE: Schema = {
    "type": "object",
    "required": ["role"],
    "anyOf": [
        {
            "required": ["role", "content"],
            "properties": {"role": {"enum": list(CONTENT_REQUIRED)}, "content": _CONTENT},
        },
        {
            "properties": {
                "role": {"enum": [role for role in ROLES if role not in CONTENT_REQUIRED]},
                "content": {"anyOf": [_CONTENT, {"type": "null"}]},
            },
        },
    ],
}

_NAME: Schema = {"type": "string", "minLength": 1}
_FUNCTION: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _NAME, "parameters": {"type": ["object", "null"]}},
}
_CHAT_CHECKED: Schema = {
    "model": {"type": "string", "minLength": 1},
    "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": _MESSAGE},
    "stream": _null("boolean"),
    "stream_options": _null("object"),
    "n": _integer(1, MAX_N),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "max_tokens": _integer(1, MAX_INT32),
    "max_completion_tokens": _integer(1, MAX_INT32),
    "seed": _integer(INT64_MIN, INT64_MAX),
    "top_logprobs": _integer(0, MAX_LOGPROBS),
    "prompt_logprobs": _integer(0, MAX_LOGPROBS),
    "logprobs": _null("boolean"),
    "parallel_tool_calls": _null("boolean"),
    "stop": {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "maxItems": MAX_STOP, "items": {"type": "string"}},
            {"type": "null"},
        ]
    },
    "user": _null("string"),
    "logit_bias": _null(
        "object",
        maxProperties=MAX_LOGIT_BIAS,
        propertyNames={"pattern": "^[0-9]+$"},
        additionalProperties={"type": "number", "minimum": -MAX_LOGIT_BIAS_VALUE, "maximum": MAX_LOGIT_BIAS_VALUE},
    ),
    "tools": _null(
        "array",
        minItems=1,
        maxItems=MAX_TOOLS,
        items={
            "type": "object",
            "required": ["function"],
            "properties": {"type": {"const": "function"}, "function": _FUNCTION},
        },
    ),
    "functions": _null("array", maxItems=MAX_TOOLS, items=_FUNCTION),
    "tool_choice": {
        "anyOf": [
            {"enum": [*TOOL_CHOICES, None]},
            {
                "type": "object",
                "required": ["function"],
                "properties": {"function": {"type": "object", "required": ["name"], "properties": {"name": _NAME}}},
            },
        ]
    },
    "response_format": _null(
        "object",
        required=["type"],
        properties={"type": {"enum": list(RESPONSE_FORMATS)}},
        **{
            "if": {"properties": {"type": {"const": "json_schema"}}},
            "then": {
                "required": ["json_schema"],
                "properties": {
                    "json_schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "schema": {"type": ["object", "boolean", "null"]}},
                    }
                },
            },
        },
    ),
    "reasoning_content": _null("boolean"),
    "reasoning": _null("object", properties={"effort": {"enum": [*EFFORTS, None]}}, additionalProperties=False),
    "reasoning_effort": {"enum": [*REASONING_EFFORTS, None]},
    "chat_template_kwargs": _null("object", propertyNames={"not": {"enum": sorted(TEMPLATE_CALL_KEYS)}}),
}

CHAT_REQUEST: Schema = {
    **_body(_CHAT_CHECKED, CHAT_PASSED, CHAT_DROPPED, ["model", "messages"]),
    # stream_options only with a stream
    "anyOf": [
        {"required": ["stream"], "properties": {"stream": {"const": True}}},
        {"properties": {"stream_options": {"type": "null"}}},
    ],
    "allOf": [
        {  # top_logprobs only with logprobs, tool_choice (but none) only with tools: vLLM's rules
            "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
            "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        },
        {
            "if": {"required": ["tool_choice"], "properties": {"tool_choice": {"not": {"enum": ["none", None]}}}},
            "then": {"required": ["tools"], "properties": {"tools": {"type": "array"}}},
        },
    ],
}

_TOKEN: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_INT32}
EMBEDDINGS_REQUEST: Schema = _body(
    {
        "model": {"type": "string", "minLength": 1},
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS, "items": {"type": "string"}},
                {"type": "array", "minItems": 1, "items": _TOKEN},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_EMBEDDING_INPUTS,
                    "items": {"type": "array", "minItems": 1, "items": _TOKEN},
                },
            ]
        },
        "encoding_format": {"enum": ["float", "base64", None]},
        "dimensions": _integer(1, MAX_INT32),
        "user": _null("string"),
    },
    EMBEDDINGS_PASSED,
    EMBEDDINGS_DROPPED,
    ["model", "input"],
)

_PROMPT: Schema = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": {"type": "string", "minLength": 1}},
        {"type": "array", "minItems": 1, "items": _TOKEN},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PROMPTS,
            "items": {"type": "array", "minItems": 1, "items": _TOKEN},
        },
    ]
}
_COMPLETIONS_CHECKED: Schema = {
    **{name: schema for name, schema in _CHAT_CHECKED.items() if name in COMPLETIONS_PASSED},
    "prompt": _PROMPT,
    "max_tokens": _integer(0, MAX_INT32),  # 0 only with echo: below
    "n": _integer(1, MAX_N),
    "logprobs": _integer(0, MAX_LOGPROBS),
    "echo": _null("boolean"),
    "suffix": _null("string"),
}
COMPLETIONS_REQUEST: Schema = {
    **_body(_COMPLETIONS_CHECKED, COMPLETIONS_PASSED, COMPLETIONS_DROPPED, ["model", "prompt"]),
    "allOf": [
        {"anyOf": CHAT_REQUEST["anyOf"]},  # stream_options only with a stream
        {  # max_tokens 0 (score an echoed prompt, no completion) only with echo
            "anyOf": [
                {"required": ["echo"], "properties": {"echo": {"const": True}}},
                {"properties": {"max_tokens": {"anyOf": [{"type": "null"}, {"minimum": 1}]}}},
            ]
        },
    ],
}

# ---------------------------------------------------------------- answers

_COUNT: Schema = {"type": "integer", "minimum": 0}
_USAGE: Schema = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT},
}
_MAYBE_USAGE: Schema = {"anyOf": [_USAGE, {"type": "null"}]}


def _completion_object(kind: str, choice: Schema, usage: Schema) -> Schema:
    """The envelope OpenAI gives chat answers, their stream events and text completions alike."""
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": kind},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": usage,
        },
    }


CHAT_COMPLETION = _completion_object(
    "chat.completion",
    {
        "type": "object",
        "required": ["index", "message"],
        "properties": {
            "index": _COUNT,
            "message": {
                "type": "object",
                "required": ["role"],
                "properties": {"role": {"type": "string"}, "content": _null("string")},
            },
            "finish_reason": _null("string"),
        },
    },
    _USAGE,
)
CHUNK = _completion_object(
    "chat.completion.chunk",
    {
        "type": "object",
        "required": ["index", "delta"],
        "properties": {"index": _COUNT, "delta": {"type": "object"}, "finish_reason": _null("string")},
    },
    _MAYBE_USAGE,
)
# an answer, and each event of a stream (OpenAI uses one object for both)
TEXT_COMPLETION = _completion_object(
    "text_completion",
    {
        "type": "object",
        "required": ["index", "text"],
        "properties": {
            "index": _COUNT,
            "text": {"type": "string"},
            "logprobs": _null("object"),
            "finish_reason": _null("string"),
        },
    },
    _MAYBE_USAGE,
)
EMBEDDINGS: Schema = {
    "type": "object",
    "required": ["object", "data", "model"],
    "properties": {
        "object": {"const": "list"},
        "model": {"type": "string"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"const": "embedding"},
                    "index": _COUNT,
                    "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
                },
            },
        },
        "usage": _USAGE,
    },
}
MODEL: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "max_model_len": _null("integer"),
    },
}
MODELS: Schema = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL}},
}
_WINDOW: Schema = {
    "type": "object",
    "required": ["model", "bucket", "used", "reserved", "limit", "remaining"],
    "properties": {
        "model": {"type": "string"},
        "bucket": {"type": "string"},
        "used": _COUNT,
        "reserved": _COUNT,
        "limit": _COUNT,
        "remaining": _COUNT,
    },
}
USAGE: Schema = {
    "type": "object",
    "required": ["object", "day", "resets_at", "resets_in_seconds", "data"],
    "properties": {
        "object": {"const": "usage"},
        "day": {"type": "string"},
        "resets_at": {"type": "string"},
        "resets_in_seconds": _COUNT,
        "data": {"type": "array", "items": _WINDOW},
        "key": {
            "type": "object",
            "description": "A scoped key's models and token budget.",
            "required": ["id", "models", "budget"],
            "properties": {
                "id": {"type": "string"},
                "models": {"type": ["array", "null"], "items": {"type": "string"}},
                "budget": _null("object"),
            },
        },
    },
}
ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string", "minLength": 1},
                "param": _null("string"),
                "code": _null("string"),
            },
        }
    },
}

# One server-sent event of a stream: a chunk, the error that ends a failed stream, or [DONE].
STREAM_EVENT: Schema = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": {"contentMediaType": "application/json", "contentSchema": {"anyOf": [CHUNK, ERROR]}},
        }
    },
}

COMPLETION_STREAM_EVENT: Schema = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": {"contentMediaType": "application/json", "contentSchema": {"anyOf": [TEXT_COMPLETION, ERROR]}},
        }
    },
}

# ---------------------------------------------------------------- the document


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _operation(operation_id: str, summary: str, answer: Schema, body: Schema | None = None) -> Schema:
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": answer},
            **{str(status): {"$ref": f"#/components/responses/Error{status}"} for status in ERROR_STATUSES},
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


DOCUMENT: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "meshgate",
        "version": "1",
        "description": "OpenAI-compatible chat completions, legacy completions and embeddings with exact token quotas. "
        "Request fields are checked per field (docs/fields.md): unknown ones are refused.",
    },
    "servers": [{"url": "/api/v1"}, {"url": "/v1"}],
    "security": [{"apiKey": []}],
    "paths": {
        "/chat/completions": {
            "post": _operation(
                "createChatCompletion",
                "A chat completion; with `stream: true`, server-sent events of `chat.completion.chunk`.",
                {**_json(CHAT_COMPLETION), "text/event-stream": {"schema": STREAM_EVENT}},
                CHAT_REQUEST,
            )
        },
        "/completions": {
            "post": _operation(
                "createCompletion",
                "A legacy text completion of a prompt; with `stream: true`, server-sent events of `text_completion`.",
                {**_json(TEXT_COMPLETION), "text/event-stream": {"schema": COMPLETION_STREAM_EVENT}},
                COMPLETIONS_REQUEST,
            )
        },
        "/embeddings": {
            "post": _operation("createEmbedding", "Embeddings of the input.", _json(EMBEDDINGS), EMBEDDINGS_REQUEST)
        },
        "/models": {"get": _operation("listModels", "The models this key may use.", _json(MODELS))},
        "/models/{model}": {
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            ],
            "get": _operation("retrieveModel", "One model.", _json(MODEL)),
        },
        "/usage": {
            "get": _operation("getUsage", "Today's usage and limits per model, and the key's budget.", _json(USAGE))
        },
    },
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": ERROR},
        "responses": {
            f"Error{status}": {"description": text, "content": _json({"$ref": "#/components/schemas/Error"})}
            for status, text in ERROR_STATUSES.items()
        },
    },
}

DOCUMENT_JSON: bytes = orjson.dumps(DOCUMENT)  # served as is by `GET /openapi.json`
