"""The one error shape every client sees: the OpenAI envelope with the right status."""

from __future__ import annotations

import orjson


class ApiError(Exception):
    """An error that is shown to the client as `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []
        self.quota: tuple[str, str, str] | None = None  # a quota refusal's (model, bucket, limit), for metrics
        self.counted = False  # serving counted this request in the metrics already

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def invalid_api_key(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, type="invalid_request_error", code="invalid_api_key")


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def insufficient_quota(message: str, headers: list[tuple[bytes, bytes]] | None = None) -> ApiError:
    return ApiError(429, message, type="insufficient_quota", code="insufficient_quota", headers=headers)


def context_length_exceeded(message: str) -> ApiError:
    return ApiError(400, message, code="context_length_exceeded", param="messages")


def upstream_error(status: int, message: str, code: str = "upstream_error") -> ApiError:
    return ApiError(status, message, type="upstream_error", code=code)
