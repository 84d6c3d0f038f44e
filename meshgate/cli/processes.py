"""`meshgate serve --processes N`: N gateway processes on one listening socket, supervised by the parent.

The process model is the one uvicorn's and gunicorn's workers use: the parent binds the socket once
and starts N children (fresh interpreters, not forks, so nothing of the parent's state is shared),
each running the whole gateway (its own event loop, key cache and Redis ledger client) and accepting
on the inherited socket. The kernel hands each connection to one child that is waiting in accept;
a child that is busy waits less, so load spreads without a balancer in between. (SO_REUSEPORT, one
socket per child, was not chosen: the connections queued on a child's socket are reset when it dies.)

The parent does no request work. It migrates the database once before the children start, restarts
a child that dies (with backoff; five quick deaths in a row mean something is wrong with the setup,
and it stops everything and exits 1), and on SIGTERM or SIGINT forwards SIGTERM, waits for the
children's graceful shutdown (at most `_GRACE` seconds, then SIGKILL) and exits 0. Children get
SIGTERM if the parent itself dies (PR_SET_PDEATHSIG), so none is left accepting alone.

Several processes are exact only on the shared ledger (MESHGATE_REDIS_URL): the embedded ledger's
windows live in one process. Local models (embedded llama.cpp, sentence-transformers) are started by
the gateway process that serves them, so a catalog with local models runs with --processes 1; run
their engines as workers of their own to serve them from many processes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from meshgate.catalog.spec import ModelSpec
from meshgate.config import Settings
from meshgate.server.metrics_share import DIR_ENV, INDEX_ENV
from meshgate.server.state import LEDGER_NEEDS_SQLITE

log = logging.getLogger("meshgate.processes")

_GRACE = 30.0  # seconds a child has to finish its requests after SIGTERM
_QUICK = 10.0  # a child that dies sooner than this after its start counts as a failed start
_MAX_QUICK_DEATHS = 5
_PR_SET_PDEATHSIG = 1


def resolve_processes(requested: int) -> int:
    """0 means one process per core this process may run on."""
    if requested < 0:
        raise ValueError("--processes must be 0 (one per core) or more")
    if requested == 0:
        return max(1, len(os.sched_getaffinity(0)))
    return requested


def refusal(settings: Settings, processes: int, models: Sequence[ModelSpec]) -> str | None:
    """Why this setup cannot be served as asked, or None."""
    if settings.redis_url is None and settings.sqlite_path is None:
        return LEDGER_NEEDS_SQLITE
    if processes > 1 and settings.redis_url is None:
        return (
            f"--processes {processes} needs the shared ledger: set MESHGATE_REDIS_URL=redis://… "
            "(the embedded ledger is exact only inside one process)"
        )
    local = [spec.id for spec in models if spec.local is not None]
    if processes > 1 and local:
        return (
            f"--processes {processes}: local models ({', '.join(local)}) run inside the gateway process; "
            "serve them with --processes 1, or run their engines on their own and list them as upstreams"
        )
    return None


def listen_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """The one listening socket all children accept on (inheritable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the children outlive a SIGKILLed parent
        pass


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0  # monotonic; when a dead child is started again
    quick_deaths: int = 0


@dataclass
class Supervisor:
    """Runs `argv` (one gateway process) `count` times with `fd` inherited, until told to stop."""

    argv: list[str]
    count: int
    fd: int
    children: list[_Child] = field(default_factory=list)
    _stopping: bool = False
    _metrics_dir: str = ""

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        # Where the children leave their metrics for each other (server/metrics_share.py); this run's only.
        self._metrics_dir = tempfile.mkdtemp(prefix="meshgate-metrics-")
        try:
            self.children = [_Child(i) for i in range(self.count)]
            for child in self.children:
                self._start(child)
            while not self._stopping:
                failed = self._watch()
                if failed is not None:
                    log.error("a gateway process died %d times in a row right after starting; stopping", failed)
                    self._stop_all()
                    return 1
                time.sleep(0.1)
            self._stop_all()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children if c.process is not None and c.process.poll() is None]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping %d gateway processes", signal.Signals(signum).name, self.count)
        self._stopping = True

    def _start(self, child: _Child) -> None:
        env = {**os.environ, INDEX_ENV: str(child.index), DIR_ENV: self._metrics_dir}
        child.process = subprocess.Popen(self.argv, env=env, pass_fds=(self.fd,), preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        log.info("gateway process %d started (pid %d)", child.index, child.process.pid)

    def _watch(self) -> int | None:
        """Restart dead children when their backoff is over; the count of quick deaths if it is too many."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is not None:
                lived = now - child.started_at
                child.quick_deaths = child.quick_deaths + 1 if lived < _QUICK else 0
                if child.quick_deaths >= _MAX_QUICK_DEATHS:
                    return child.quick_deaths
                delay = 0.0 if child.quick_deaths == 0 else min(0.5 * 2 ** (child.quick_deaths - 1), 10.0)
                log.warning(
                    "gateway process %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                    child.index,
                    process.pid,
                    process.returncode,
                    lived,
                    delay,
                )
                child.process, child.restart_at = None, now + delay
            if child.process is None and now >= child.restart_at:
                self._start(child)
        return None

    def _stop_all(self) -> None:
        live = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _GRACE
        for process in live:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("gateway process %d did not stop within %.0f s; killing it", process.pid, _GRACE)
                process.kill()
                process.wait()


def child_argv(config: str, host: str, port: int, fd: int) -> list[str]:
    """The command line of one gateway process serving on the inherited socket `fd`."""
    return [
        sys.executable,
        "-m",
        "meshgate.cli.main",
        "serve",
        "--config",
        config,
        "--host",
        host,
        "--port",
        str(port),
        "--listen-fd",
        str(fd),
    ]
