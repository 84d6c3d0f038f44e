"""Request bodies nested deeper than MAX_JSON_DEPTH are a 400, by either way of checking."""

from __future__ import annotations

import orjson
import pytest

from meshgate.protocol.errors import ApiError
from meshgate.server.http import MAX_JSON_DEPTH, parse_json


def lists(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def dense(inner: bytes) -> bytes:
    """A body with thousands of numbers around `inner`: checked by encoding, not by walking."""
    return b'{"input": [' + b",".join([b"[1,2,3,4,5,6,7,8]"] * 2000) + b'], "x": ' + inner + b"}"


@pytest.mark.parametrize("make", [lists, objects, lambda d: dense(lists(d - 1)), lambda d: dense(objects(d - 1))])
def test_the_limit_is_exact(make: object) -> None:
    assert parse_json(make(MAX_JSON_DEPTH)) is not None  # type: ignore[operator]
    with pytest.raises(ApiError) as refused:
        parse_json(make(MAX_JSON_DEPTH + 1))  # type: ignore[operator]
    assert refused.value.status == 400 and refused.value.type == "invalid_request_error"


@pytest.mark.parametrize("depth", [255, 300, 1000])
def test_deeper_than_orjson_can_encode_is_refused(depth: int) -> None:
    with pytest.raises(ApiError, match="nested deeper"):
        parse_json(lists(depth))


def test_deeper_than_orjson_can_parse_is_refused() -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(lists(2000))
    assert refused.value.status == 400


def test_ordinary_bodies_pass() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 100_000}] * 3, "input": list(range(5000))}
    assert parse_json(orjson.dumps(body)) == body
    assert parse_json(b'"just a string"') == "just a string"
