"""Supervise local worker processes: spawn, health-check, restart with backoff, stop without orphans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("meshgate.workers.local")

PARENT_PID_ENV = "MESHGATE_PARENT_PID"  # read by meshgate.engines.lifecycle.die_with_parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def probe_http(host: str, port: int, path: str, timeout: float) -> bool:
    """True if GET `path` answers 200. A raw request: no HTTP client dependency, no connection pool."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1] == b"200"


class LocalWorker:
    """One worker process on 127.0.0.1:`port`, kept alive until `stop()`.

    `on_state(False)` is called as soon as the process dies or a health check fails,
    `on_state(True)` when it answers its health check again (only on changes).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        *,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        on_state: Callable[[bool], None] | None = None,
        health_interval: float = 1.0,
        health_timeout: float = 3.0,
        load_timeout: float = 300.0,
        unhealthy_restart_after: float = 30.0,
        max_backoff: float = 30.0,
        stop_grace: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.health_path = health_path
        self.env = env or {}
        self.on_state = on_state
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.load_timeout = load_timeout
        self.unhealthy_restart_after = unhealthy_restart_after
        self.max_backoff = max_backoff
        self.stop_grace = stop_grace
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._spawned_at = 0.0
        self._output: deque[str] = deque(maxlen=40)  # last lines, shown when the worker dies

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        """Spawn the worker and supervise it in the background; does not wait for it to load."""
        if self._supervisor is not None:
            raise RuntimeError(f"worker {self.name} already started")
        self._stopping.clear()
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"worker-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """SIGTERM the worker's process group, SIGKILL it after `stop_grace` seconds."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._terminate()
        self._set_ready(False)

    # -- internals --

    def _set_ready(self, ready: bool) -> None:
        if ready == self._ready.is_set():
            return
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        if self.on_state is not None:
            try:
                self.on_state(ready)
            except Exception:
                log.exception("on_state callback of worker %s failed", self.name)

    async def _spawn(self) -> None:
        env = {**os.environ, **self.env, PARENT_PID_ENV: str(os.getpid())}
        log.info("loading %s …", self.name)
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stop() reaches any grandchildren too
        )
        self._spawned_at = time.monotonic()
        # Keep a reference: the loop only holds tasks weakly.
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(self._proc))

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        # Keep reading so a chatty worker never blocks on a full pipe; keep the tail for crash reports.
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._output.append(line)
            log.debug("[%s] %s", self.name, line)

    async def _supervise(self) -> None:
        backoff = 0.5  # doubled before use: the first restart of a failing worker waits 1 s
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            ran_healthy = await self._watch(proc)
            if self._stopping.is_set():
                return
            self._set_ready(False)
            backoff = 1.0 if ran_healthy else min(backoff * 2, self.max_backoff)
            tail = "\n  ".join(list(self._output)[-10:])
            log.warning(
                "%s exited (code %s); restarting in %.0f s. Last output:\n  %s",
                self.name,
                proc.returncode,
                backoff,
                tail,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            try:
                await self._spawn()
            except OSError as err:  # e.g. the interpreter vanished; the old, exited proc makes us retry
                log.error("cannot start %s: %s", self.name, err)

    async def _watch(self, proc: asyncio.subprocess.Process) -> bool:
        """Health-check `proc` until it exits; True if it had been healthy for a while (no crash loop)."""
        exited = asyncio.get_running_loop().create_task(proc.wait())
        healthy_since: float | None = None
        unhealthy_since: float | None = None
        became_ready = False
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=self.health_interval)
                if done:
                    return healthy_since is not None and time.monotonic() - healthy_since > 30.0
                ok = await probe_http("127.0.0.1", self.port, self.health_path, timeout=self.health_timeout)
                now = time.monotonic()
                if ok:
                    if not became_ready:
                        became_ready = True
                        log.info("%s ready in %.1f s", self.name, now - self._spawned_at)
                    elif not self.ready:
                        log.info("%s healthy again", self.name)
                    healthy_since = healthy_since or now
                    unhealthy_since = None
                    self._set_ready(True)
                    continue
                healthy_since = None
                self._set_ready(False)
                unhealthy_since = unhealthy_since or now
                # A worker that never loads, or that hangs, is killed so the restart path takes over.
                limit = self.unhealthy_restart_after if became_ready else self.load_timeout
                if now - unhealthy_since > limit:
                    log.warning("%s unhealthy for %.0f s; killing it", self.name, now - unhealthy_since)
                    self._kill_group(proc, signal.SIGKILL)
        finally:
            exited.cancel()

    def _kill_group(self, proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # pgid == pid thanks to start_new_session

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._kill_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_grace)
            except TimeoutError:
                self._kill_group(proc, signal.SIGKILL)
                await proc.wait()
        # The group may outlive its leader (grandchildren): make sure nothing is left.
        self._kill_group(proc, signal.SIGKILL)
