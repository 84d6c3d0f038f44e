"""LocalWorker supervision with a real llama.cpp worker: ready, SIGKILL -> restart, stop, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import openai

from meshgate.catalog.spec import LocalSpec
from meshgate.engines.launch import engine_command
from meshgate.workers.local import LocalWorker, free_port, probe_http


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


async def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.05)
    return False


def chat_worker(states: list[bool], unhealthy_restart_after: float = 30.0) -> LocalWorker:
    port = free_port()
    # One small slot: loads in about a second, so the restart is quick.
    argv = engine_command(LocalSpec("llama.cpp", "builtin:smollm2", parallel=1), "smol", 512, port)
    return LocalWorker(
        "chat model smol",
        argv,
        port,
        on_state=states.append,
        health_interval=0.2,
        health_timeout=1.0,
        unhealthy_restart_after=unhealthy_restart_after,
    )


async def test_sigkill_restarts_and_reports_state() -> None:
    states: list[bool] = []
    worker = chat_worker(states)
    await worker.start()
    try:
        assert await worker.wait_ready(60)
        assert states == [True] and worker.ready
        client = openai.AsyncOpenAI(base_url=worker.url, api_key="unused", max_retries=0)
        r = await client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        assert r.choices[0].message.content

        first_pid = worker.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        assert await wait_for(lambda: states == [True, False], 1.0)  # reported at once, not at next probe
        assert not worker.ready

        assert await worker.wait_ready(60)
        assert states == [True, False, True]
        assert worker.restarts == 1 and worker.pid not in (None, first_pid)
        r = await client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        assert r.choices[0].message.content
    finally:
        await worker.stop()
    assert not alive(first_pid)
    assert not await probe_http("127.0.0.1", worker.port, "/health", timeout=1.0)
    assert states[-1] is False


async def test_hung_worker_is_reported_and_killed() -> None:
    states: list[bool] = []
    worker = chat_worker(states, unhealthy_restart_after=1.0)
    await worker.start()
    try:
        assert await worker.wait_ready(60)
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive but not answering
        assert await wait_for(lambda: states == [True, False], 5.0)
        assert await worker.wait_ready(60)  # killed after 1 s unhealthy, then restarted
        assert worker.restarts == 1 and not alive(pid)
    finally:
        await worker.stop()


async def test_crashing_worker_is_retried_with_backoff_and_stops_cleanly() -> None:
    states: list[bool] = []
    argv = [sys.executable, "-c", "import sys; print('model file is broken'); sys.exit(3)"]
    worker = LocalWorker("broken", argv, free_port(), on_state=states.append, health_interval=0.1)
    await worker.start()
    assert not await worker.wait_ready(1.8)
    assert worker.restarts >= 1
    started = time.monotonic()
    await worker.stop()
    assert time.monotonic() - started < 5
    assert states == []  # never became ready, so never reported a change


PARENT = """
import asyncio, sys
from meshgate.workers.local import LocalWorker, free_port
async def main():
    argv = [sys.executable, "-c",
            "from meshgate.engines.lifecycle import die_with_parent; die_with_parent(); import time; time.sleep(60)"]
    w = LocalWorker("child", argv, free_port())
    await w.start()
    await asyncio.sleep(1.0)
    print(w.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_worker_dies_with_a_killed_gateway() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()  # SIGKILL: no chance to clean up
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
