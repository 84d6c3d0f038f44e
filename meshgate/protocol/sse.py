"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

DONE = b"[DONE]"


def event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class EventSplitter:
    """Cuts a byte stream into SSE events, whatever the network's chunk boundaries were."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The complete events in `data` (each with its blank-line terminator), keeping any partial tail."""
        buffer = self._buffer + data if self._buffer else data
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        events = buffer.split(b"\n\n")
        self._buffer = events.pop()
        return [e + b"\n\n" for e in events if e]

    def rest(self) -> bytes:
        tail, self._buffer = self._buffer, b""
        return tail


def data_of(event_bytes: bytes) -> bytes | None:
    """The `data:` payload of one event (multi-line data joined by newlines), or None if it has none."""
    if event_bytes.startswith(b"data: ") and event_bytes.find(b"\n") == len(event_bytes) - 2:
        return event_bytes[6:-2]  # the usual one-line event: the fast path of a hot loop
    lines = [line for line in event_bytes.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)
