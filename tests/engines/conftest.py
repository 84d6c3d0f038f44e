"""Session-scoped real local workers (SmolLM2 on llama.cpp, MiniLM on sentence-transformers): loaded once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from meshgate.catalog.spec import LocalSpec
from meshgate.engines.launch import engine_command
from meshgate.workers.local import free_port

CHAT_NAME = "smollm2-135m-instruct"
EMBED_NAME = "all-minilm-l6-v2"


@dataclass
class RunningWorker:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"


def start_worker(spec: LocalSpec, name: str, context_length: int, timeout: float = 120.0) -> RunningWorker:
    port = free_port()
    process = subprocess.Popen(engine_command(spec, name, context_length, port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} worker exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return RunningWorker(name, port, process)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"{name} worker not ready within {timeout} s")


def stop_worker(worker: RunningWorker) -> None:
    worker.process.terminate()
    try:
        worker.process.wait(10)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()


@pytest.fixture(scope="session")
def chat_worker() -> Iterator[RunningWorker]:
    # 2 slots x 2048 tokens keeps load time and memory small; concurrency is measured in bench/.
    spec = LocalSpec("llama.cpp", "builtin:smollm2", parallel=2)
    worker = start_worker(spec, CHAT_NAME, 2048)
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="session")
def embed_worker() -> Iterator[RunningWorker]:
    worker = start_worker(LocalSpec("sentence-transformers", "builtin:all-minilm-l6-v2"), EMBED_NAME, 256)
    yield worker
    stop_worker(worker)
