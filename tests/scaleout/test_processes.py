"""`meshgate serve --processes N`: one port, N supervised gateway processes, exact quota across them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    MESHGATE,
    ROOT,
    FakeUpstream,
    LiveGateway,
    catalog_for,
    free_port,
    shared_backend,
    start_gateway,
    stop,
)
from tests.scaleout.conftest import LLAMA, burst, chat, history_total, set_quota_everywhere, wait_for
from tests.server.metrics_text import samples


def children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.fixture
def two(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[LiveGateway]:
    live = start_gateway(
        tmp_path / "home", catalog_for(fake_upstream.url), backend=shared_backend("procs"), args=("--processes", "2")
    )
    assert live.process is not None
    wait_for(lambda: len(children(live.process.pid)) == 2, 30, "the supervisor did not start 2 processes")  # type: ignore[union-attr]
    yield live
    stop(live.process)


def test_two_processes_share_the_port_spread_the_load_and_keep_the_quota_exact(two: LiveGateway) -> None:
    assert two.process is not None
    pids = children(two.process.pid)
    name, key = two.new_account("procs")
    quota = 3_000
    set_quota_everywhere([two] * 4, name, key, quota)  # asked 4 times: both processes likely answered
    before = {pid: cpu_seconds(pid) for pid in pids}

    outcomes = asyncio.run(burst([two.base_url], key, 300, chat(10)))

    spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
    total = sum(spent.values())
    assert all(share > 0.05 * total for share in spent.values()), f"CPU seconds per process: {spent}"
    charged = sum(o.total_tokens for o in outcomes if o.status == 200)
    assert charged <= quota and any(o.status == 200 for o in outcomes)
    assert {(o.status, o.code) for o in outcomes if o.status != 200} == {(429, "insufficient_quota")}
    for _ in range(4):  # whichever process answers, the same window
        window = two.window(key, LLAMA)
        assert (window["used"], window["reserved"]) == (charged, 0)
    assert history_total(two, name) == charged
    # Whichever process answers a scrape, /metrics counts both processes' requests (each writes its
    # numbers once a second for the others).
    wait_for(lambda: answered(two) == len(outcomes), 10, "/metrics did not count both processes' requests")
    assert [answered(two) for _ in range(6)] == [len(outcomes)] * 6


def answered(gateway: LiveGateway) -> float:
    """The chat requests /metrics says were answered (any status), as one scrape reports them."""
    scraped = samples(httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", timeout=10).text)
    return sum(
        count
        for (name, labels), count in scraped.items()
        if name == "meshgate_requests_total" and {("model", LLAMA), ("endpoint", "chat/completions")} <= labels
    )


def test_a_dead_process_is_restarted_and_sigterm_stops_them_all(two: LiveGateway) -> None:
    assert two.process is not None
    first, second = children(two.process.pid)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: first not in children(two.process.pid) and len(children(two.process.pid)) == 2, 30, "no restart")  # type: ignore[union-attr]
    _, key = two.new_account("restarted")
    outcomes = asyncio.run(burst([two.base_url], key, 20, chat(5)))
    assert [o.status for o in outcomes] == [200] * 20  # the survivor and the new one both serve
    assert second in children(two.process.pid)

    live = children(two.process.pid)
    two.process.send_signal(signal.SIGTERM)
    assert two.process.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in live):
        assert time.monotonic() < deadline, "a gateway process outlived its supervisor"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _serve(tmp_path: Path, upstream: FakeUpstream, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "catalog.toml"
    config.write_text(catalog_for(upstream.url))
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    return subprocess.run(
        [*MESHGATE, "serve", "--config", str(config), "--port", str(free_port()), *args],
        env={**base, "MESHGATE_HOME": str(tmp_path / "home"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_processes_without_redis_and_postgresql_without_redis_are_refused_clearly(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    no_redis = _serve(tmp_path, fake_upstream, {}, "--processes", "2")
    assert no_redis.returncode == 2 and "Traceback" not in no_redis.stderr
    assert "--processes 2 needs the shared ledger: set MESHGATE_REDIS_URL" in no_redis.stderr
    backend = shared_backend("refused")
    postgres_only = _serve(tmp_path, fake_upstream, {"MESHGATE_DATABASE_URL": backend["MESHGATE_DATABASE_URL"]})
    assert postgres_only.returncode == 2 and "Traceback" not in postgres_only.stderr
    assert "set MESHGATE_REDIS_URL" in postgres_only.stderr
