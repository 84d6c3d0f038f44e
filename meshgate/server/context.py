"""One request's facts, gathered by its handler and handed to serving as a single object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshgate.server.admission import Admission, Counter
from meshgate.server.auth import Principal
from meshgate.server.reasoning import ReasoningShaper
from meshgate.server.state import ModelRoute


@dataclass(slots=True)
class StreamOptions:
    include_usage: bool  # the client asked for the final usage event
    client_continuous: bool  # the client asked for usage in every event (vLLM's continuous_usage_stats)
    legacy: bool = False  # /completions: `text_completion` events, the text in `choices[].text`
    echo_pieces: int = 0  # text events that are an echoed prompt, not generated tokens (echo with max_tokens 0)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    route: ModelRoute
    upstream_path: bytes  # e.g. b"/chat/completions", under the replica's base URL
    body: dict[str, Any]  # what goes upstream (the model renamed per replica when sent)
    admission: Admission
    choices: int = 1
    stream: StreamOptions | None = None  # None: a plain JSON answer
    count_prompt: Counter | None = None  # the engine's exact prompt count, for charging a request cut short
    # Told (prompt, completion, outcome) right after the one settle, before the last bytes go out (the web
    # chat keeps what its answer was charged); None for API requests.
    on_settle: Callable[[int, int, str], None] | None = None
    reasoning: ReasoningShaper | None = None  # a reasoning model's answers, shaped (server/reasoning.py)

    @property
    def completion_limit(self) -> int:
        """Completion tokens the request may be charged for at most: what admission reserved for them."""
        return max(self.admission.reservation.amount - self.admission.prompt_estimate, 0)
