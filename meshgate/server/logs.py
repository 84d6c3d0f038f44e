"""Request ids and log lines: every answer carries `x-request-id`, every log line of a request names it.

`App` opens a `RequestMark` per HTTP request (a context variable, so everything the request's
task logs sees it): the client's own `x-request-id` when it is printable ASCII of at most 128
characters, else the id the handler gives the request (`chatcmpl-…`, `cmpl-…`, `embd-…`), else
one made up when the answer starts. `MESHGATE_LOG_FORMAT=json` writes one JSON object per line
(time, level, logger, message, request_id). Nothing logged holds a key or a prompt: the code logs
ids, model names, URLs of engines and counts, never request bodies or headers.
"""

from __future__ import annotations

import logging
import os
import random
import time
from contextvars import ContextVar

import orjson

MAX_REQUEST_ID = 128
_ids = random.Random(os.urandom(32))  # request ids need to be unique, not secret: no syscall per id


class RequestMark:
    """One request's id and arrival time, as its task sees them."""

    __slots__ = ("client_id", "request_id", "started")

    def __init__(self, client_id: str | None) -> None:
        self.client_id = client_id  # the client's own x-request-id, if it sent a valid one
        self.request_id = client_id  # what the answer's x-request-id and the log lines say
        self.started = time.monotonic()

    def header(self) -> bytes:
        if self.request_id is None:
            self.request_id = new_request_id()
        return self.request_id.encode()


def new_request_id() -> str:
    """An id for an answer no handler named (refusals at the edge, the web app, 404s)."""
    return f"req-{_ids.getrandbits(96):024x}"


CURRENT: ContextVar[RequestMark | None] = ContextVar("meshgate_request", default=None)


def client_request_id(value: bytes | None) -> str | None:
    """The client's `x-request-id` if it is one to keep: 1-128 printable ASCII characters."""
    if value is None or not 0 < len(value) <= MAX_REQUEST_ID:
        return None
    if not all(0x20 < byte < 0x7F for byte in value):  # no spaces, controls or non-ASCII (log injection)
        return None
    return value.decode("ascii")


def name_request(request_id: str) -> None:
    """The handler's id for the request: the answer's `x-request-id` unless the client sent its own."""
    mark = CURRENT.get()
    if mark is not None and mark.client_id is None:
        mark.request_id = request_id


def current_request_id() -> str | None:
    mark = CURRENT.get()
    return None if mark is None else mark.request_id


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None else f"{line} [request {request_id}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, process."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """The root logger for `meshgate serve`: text (the default) or JSON lines, with request ids."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_WithRequestId())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
