"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""

from __future__ import annotations

DONE = b"[DONE]"


def event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class EventTooLarge(ValueError):
    """An event grew past the splitter's limit without ending."""


class EventSplitter:
    """Cuts a byte stream into SSE events, whatever the network's chunk boundaries were.

    Linear in the bytes fed: a partial event is kept as a list of pieces and joined once,
    when its end arrives (re-joining a growing buffer per chunk made a 200 MB event cost
    36 s of CPU), and an event larger than `max_event_bytes` raises `EventTooLarge`.
    """

    __slots__ = ("_cr", "_max", "_parts", "_size")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._max = max_event_bytes
        self._cr = False  # the last chunk ended in "\r": its "\n" may start the next one

    def feed(self, data: bytes) -> list[bytes]:
        """The complete events in `data` (each with its blank-line terminator), keeping any partial tail."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n")
        if self._parts:
            ends_here = b"\n\n" in data or (data.startswith(b"\n") and self._parts[-1].endswith(b"\n"))
            if not ends_here:
                self._keep(data)
                return []
            data = b"".join(self._parts) + data
            self._parts = []
            self._size = 0
        events = data.split(b"\n\n")
        tail = events.pop()
        if tail:
            self._keep(tail)
        return [e + b"\n\n" for e in events if e]

    def _keep(self, piece: bytes) -> None:
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self._max:
            raise EventTooLarge(f"an event from the upstream is larger than {self._max} bytes")

    def rest(self) -> bytes:
        tail = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return tail


def data_of(event_bytes: bytes) -> bytes | None:
    """The `data:` payload of one event (multi-line data joined by newlines), or None if it has none."""
    if event_bytes.startswith(b"data: ") and event_bytes.find(b"\n") == len(event_bytes) - 2:
        return event_bytes[6:-2]  # the usual one-line event: the fast path of a hot loop
    lines = [line for line in event_bytes.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)
