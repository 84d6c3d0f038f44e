"""A reasoning model's answers, one shape whatever the engine: `reasoning_content` and `reasoning`.

Engines name the reasoning differently: `reasoning_content` (older vLLM, llama.cpp, SGLang),
`reasoning` (vLLM since the rename), or not at all — `<think>…</think>` left in the content
by an engine run without a reasoning parser (catalog `think_tags = true`). The shaper gives
every message and delta both names, splits inline tags out (in streams too, where a tag may
be cut between two events), or removes the reasoning when the client sent
`"reasoning_content": false`. Counting and charging happen before shaping, on what the
engine generated: a stripped reasoning is still charged, as every generated token is.

Only reasoning models get a shaper: plain models' events are not touched.
"""

from __future__ import annotations

from typing import Any

OPEN, CLOSE = "<think>", "</think>"
_NAMES = ("reasoning_content", "reasoning")


def split_think(content: str, always: bool) -> tuple[str | None, str]:
    """(reasoning, content) of a whole answer with inline tags; reasoning None when there is none.

    `always`: the chat template opened the tag itself (DeepSeek-R1), so text before a lone
    `</think>` is reasoning too. An answer without any tag is left as it is.
    """
    stripped = content.lstrip()
    if stripped.startswith(OPEN):
        inner = stripped[len(OPEN) :]
        end = inner.find(CLOSE)
        if end < 0:
            return inner, ""  # cut off while reasoning
        return inner[:end], inner[end + len(CLOSE) :].lstrip()
    if always:
        end = content.find(CLOSE)
        if end >= 0:
            return content[:end], content[end + len(CLOSE) :].lstrip()
    return None, content


def _held(text: str, tag: str) -> int:
    """How many trailing characters of `text` could start `tag` (kept back until the next event)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class _ChoiceState:
    __slots__ = ("pending", "state")

    def __init__(self) -> None:
        self.state = "start"  # start (nothing but whitespace yet) | think | after (</think> seen) | answer
        self.pending = ""  # text held back: leading whitespace, or a tag's possible beginning


class ReasoningShaper:
    """Shapes the answers of one request to a reasoning model."""

    __slots__ = ("_choices", "always", "show", "split")

    def __init__(self, *, show: bool, split: bool, always: bool) -> None:
        self.show = show  # the client wants the reasoning
        self.split = split  # the engine leaves <think> tags in the content
        self.always = always
        self._choices: dict[int, _ChoiceState] = {}

    # ------------------------------------------------------------ whole answers

    def answer(self, parsed: dict[str, Any]) -> bool:
        """Shape a complete answer's messages in place; True if anything changed."""
        choices = parsed.get("choices")
        changed = False
        if type(choices) is list:
            for choice in choices:
                message = choice.get("message") if type(choice) is dict else None
                if type(message) is dict:
                    changed |= self._message(message)
        return changed

    def _message(self, message: dict[str, Any]) -> bool:
        reasoning = _engine_reasoning(message)
        content = message.get("content")
        split = False
        if self.split and type(content) is str:
            inline, rest = split_think(content, self.always)
            if inline is not None:
                reasoning = (reasoning or "") + inline
                message["content"] = rest
                split = True
        return self._set(message, reasoning) or split

    def _set(self, target: dict[str, Any], reasoning: str | None) -> bool:
        if not self.show:
            found = False
            for name in _NAMES:
                found |= target.pop(name, None) is not None
            return found
        if reasoning is None:
            return False
        target["reasoning_content"] = target["reasoning"] = reasoning
        return True

    # ------------------------------------------------------------ streams

    def stream(self, choices: list[Any]) -> bool:
        """Shape the deltas of one event in place; True if anything changed."""
        changed = False
        for choice in choices:
            if type(choice) is not dict:
                continue
            delta = choice.get("delta")
            if type(delta) is not dict:
                continue
            reasoning = _engine_reasoning(delta)
            if self.split:
                index = choice.get("index", 0)
                state = self._choices.get(index) if type(index) is int else None
                if state is None:
                    state = self._choices[index if type(index) is int else 0] = _ChoiceState()
                content = delta.get("content")
                text = content if type(content) is str else ""
                answer, inline = self._feed(state, text, choice.get("finish_reason") is not None)
                if inline:
                    reasoning = (reasoning or "") + inline
                if answer != text or (inline and content is not None):
                    changed = True
                    if answer or "role" in delta:
                        delta["content"] = answer
                    else:
                        delta.pop("content", None)
            changed |= self._set(delta, reasoning)
        return changed

    def _feed(self, st: _ChoiceState, text: str, last: bool) -> tuple[str, str]:
        """(content, reasoning) to send for one delta's text."""
        if st.state == "answer" and not st.pending:
            return text, ""
        if st.state == "after":  # just past </think>: the whitespace that follows it is dropped
            text = text.lstrip()
            if text:
                st.state = "answer"
            return text, ""
        buffer = st.pending + text
        st.pending = ""
        answer = reasoning = ""
        if st.state == "start":
            stripped = buffer.lstrip()
            if stripped.startswith(OPEN):
                st.state, buffer = "think", stripped[len(OPEN) :]
            elif not stripped or OPEN.startswith(stripped):
                if not last:
                    st.pending = buffer  # whitespace or a tag's beginning: wait for more
                    return "", ""
                return buffer, ""
            elif self.always:
                st.state = "think"  # the template opened the tag: reasoning until </think>
            else:
                st.state = "answer"
                return buffer, ""
        if st.state == "think":
            end = buffer.find(CLOSE)
            if end >= 0:
                reasoning, answer = buffer[:end], buffer[end + len(CLOSE) :].lstrip()
                st.state = "answer" if answer else "after"
            else:
                keep = 0 if last else _held(buffer, CLOSE)
                reasoning = buffer[: len(buffer) - keep]
                st.pending = buffer[len(buffer) - keep :]
        elif st.state == "answer":
            answer = buffer
        return answer, reasoning


def _engine_reasoning(message: dict[str, Any]) -> str | None:
    """The reasoning an engine put in a message or delta, under either name."""
    value = message.get("reasoning_content")
    if type(value) is not str:
        value = message.get("reasoning")
    return value if type(value) is str else None
