"""Noticing that the client has gone, from the moment its request goes upstream.

Engines such as vLLM send the headers of a plain answer only when the whole answer is
done, so the watch cannot wait for them: until the headers arrive, a hang-up cancels the
task that waits for them (which aborts the upstream connection, so the engine stops);
afterwards it closes the upstream response. Watching costs a task per request, so it
starts only once a request has run for `delay`: fast answers never pay for it, and a
hang-up is still acted on within that delay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshgate.server.http import Receive
from meshgate.workers.http_client import UpstreamResponse

HANG_UP_WATCH_DELAY = 0.02


class HangUpWatch:
    __slots__ = ("_owner", "_receive", "_response", "_task", "_timer", "gone")

    def __init__(self, receive: Receive, delay: float = HANG_UP_WATCH_DELAY) -> None:
        self._receive = receive
        self._owner = asyncio.current_task()
        self._response: UpstreamResponse | None = None
        self._task: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(delay, self._arm)
        self.gone = False  # the client hung up

    def attach(self, response: UpstreamResponse) -> None:
        """From now on a hang-up closes this response instead of cancelling the waiting task."""
        self._response = response

    def _arm(self) -> None:
        self._timer = None
        self._task = task = asyncio.ensure_future(self._receive())
        task.add_done_callback(self._gone)

    def _gone(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        message = task.result() if task.exception() is None else None
        if message is not None and message.get("type") != "http.disconnect":
            return  # not a hang-up (nothing else arrives once the body is read; be safe anyway)
        self.gone = True
        if self._response is not None:
            self._response.close()
        elif self._owner is not None:
            self._owner.cancel()

    def stop(self) -> None:
        """Stop watching (the request is over). A cancellation this watch caused is taken back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
        if self.gone and self._response is None and self._owner is not None:
            self._owner.uncancel()
        self._owner = None
