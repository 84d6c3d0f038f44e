"""Nothing is lost, through live gateways: a locked database, a second server, a crash mid-stream."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import MESHGATE, ROOT, FakeUpstream, LiveGateway, catalog_for, free_port, start_gateway, stop
from tests.fakes.upstream import prompt_tokens

# SQLite's lock, one server per database, crash recovery from open_reservations: the embedded ledger's own
# promises (the shared ledger's are in tests/quota/test_redis_ledger.py and tests/scaleout).
pytestmark = pytest.mark.embedded_ledger

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES = [{"role": "user", "content": "hi"}]


def account_id(live: LiveGateway, name: str) -> int:
    with sqlite3.connect(live.home / "meshgate.db") as db:
        (found,) = db.execute("SELECT id FROM accounts WHERE name=?", (name,)).fetchone()
    return int(found)


def history(live: LiveGateway, name: str) -> list[tuple[str, int, str]]:
    """The account's usage events: (request id, total tokens, outcome)."""
    db = sqlite3.connect(live.home / "meshgate.db")
    try:
        rows = db.execute(
            "SELECT request_id, total_tokens, outcome FROM usage_events WHERE account_id=? ORDER BY created_at",
            (account_id(live, name),),
        ).fetchall()
    finally:
        db.close()
    return [(str(r), int(t), str(o)) for r, t, o in rows]


def kill(live: LiveGateway) -> None:
    assert live.process is not None
    live.process.send_signal(signal.SIGKILL)
    live.process.wait(10)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# ------------------------------------------------------------------ 9: a locked database


def test_a_locked_database_stalls_nothing_and_loses_no_charge(fake_upstream: FakeUpstream, home: Path) -> None:
    live = start_gateway(home, catalog_for(fake_upstream.url))
    try:
        warm_name, warm_key = live.new_account("warm")
        cold_name, cold_key = live.new_account("cold")  # its windows are first loaded while the lock is held
        assert live.window(warm_key, LLAMA)["used"] == 0

        locker = sqlite3.connect(home / "meshgate.db", isolation_level=None, timeout=10)
        locker.execute("BEGIN IMMEDIATE")  # another process's write lock: every writer waits for it
        locked_at = time.monotonic()
        health: list[float] = []
        stop_health = threading.Event()

        def poll_health() -> None:
            with httpx.Client(timeout=5) as client:
                while not stop_health.is_set():
                    started = time.monotonic()
                    ok = client.get(f"http://127.0.0.1:{live.port}/health").status_code == 200
                    health.append(time.monotonic() - started if ok else float("inf"))
                    stop_health.wait(0.1)

        def one(i: int) -> tuple[int, int]:
            key = cold_key if i % 3 == 0 else warm_key
            body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 3 + i % 5, "stream": i % 2 == 1}
            if body["stream"]:
                body["stream_options"] = {"include_usage": True}
            time.sleep(i * 0.25)  # spread over the time the lock is held
            response = httpx.post(
                live.base_url + "/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            if not body["stream"]:
                return response.status_code, response.json()["usage"]["total_tokens"] if response.is_success else -1
            usage = [line for line in response.text.splitlines() if '"usage":{' in line]
            total = orjson.loads(usage[-1][len("data: ") :])["usage"]["total_tokens"] if usage else -1
            return response.status_code, total

        poller = threading.Thread(target=poll_health)
        poller.start()
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(24)]  # the last starts ~6 s into the lock
            while time.monotonic() - locked_at < 7:
                time.sleep(0.05)
            locker.execute("ROLLBACK")
            results = [f.result(timeout=60) for f in futures]
        stop_health.set()
        poller.join()
        locker.close()

        assert [status for status, _ in results] == [200] * 24
        # a server that waited on the lock would answer after the ~7 s it is held; the margin is for a loaded CI machine
        assert len(health) > 40 and max(health) < 1.0, f"/health took up to {max(health):.2f} s"
        told = {"warm": 0, "cold": 0}
        for i, (_, total) in enumerate(results):
            assert total > 0
            told["cold" if i % 3 == 0 else "warm"] += total
        for name, key, kind in ((warm_name, warm_key, "warm"), (cold_name, cold_key, "cold")):
            events = history(live, name)
            assert len(events) == (8 if kind == "cold" else 16)
            assert sum(total for _, total, _ in events) == told[kind] == live.window(key, LLAMA)["used"]
    finally:
        stop(live.process)  # type: ignore[arg-type]


# ------------------------------------------------------------------ 10: one server per database


def test_a_second_server_on_the_same_home_refuses_to_start(fake_upstream: FakeUpstream, home: Path) -> None:
    live = start_gateway(home, catalog_for(fake_upstream.url))
    assert live.process is not None
    try:
        second = subprocess.run(
            [*MESHGATE, "serve", "--config", str(home / "catalog.toml"), "--port", str(free_port())],
            env=live.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0
        message = second.stderr.strip().splitlines()[-1]
        assert f"pid {live.process.pid}" in message and str(home / "meshgate.db") in message
        assert "one server" in message and "shared ledger" in message
        assert "Traceback" not in second.stderr
        # the CLI still works on the database the server owns, and the server still serves
        name, key = live.new_account("cli")
        assert f"usage of {name}" in live.cli("usage", "--account", name).stdout
        assert live.window(key, LLAMA)["used"] == 0

        kill(live)  # the OS releases the lock with the process
        again = start_gateway(home, catalog_for(fake_upstream.url))
        try:
            assert again.window(key, LLAMA)["used"] == 0
        finally:
            stop(again.process)  # type: ignore[arg-type]
    finally:
        stop(live.process)


# ------------------------------------------------------------------ 11: a crash mid-stream


def open_rows(live: LiveGateway) -> list[tuple[str, int, int]]:
    db = sqlite3.connect(live.home / "meshgate.db")
    try:
        return db.execute("SELECT request_id, prompt_tokens, completion_tokens FROM open_reservations").fetchall()
    except sqlite3.OperationalError:  # no such table: nothing records progress
        return []
    finally:
        db.close()


def test_a_crash_mid_stream_charges_what_was_delivered(fake_upstream: FakeUpstream, home: Path) -> None:
    live = start_gateway(home, catalog_for(fake_upstream.url))
    name, key = live.new_account("crash")
    body = {
        "model": LLAMA,
        "messages": MESSAGES,
        "max_tokens": 100,
        "stream": True,
        "mock": {"delay_ms": 100, "ignore_max_tokens": 100},  # a 10 s stream
    }
    received = 0
    try:
        with httpx.stream(
            "POST",
            live.base_url + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            assert response.status_code == 200, response.read()
            headers = response.headers
            reserved = int(headers["x-ratelimit-limit-tokens"]) - int(headers["x-ratelimit-remaining-tokens"])
            started = time.monotonic()
            lines = response.iter_lines()  # kept: closing the generator would close the connection
            for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    received += 1
                if time.monotonic() - started >= 2:
                    break
            # The client stops reading but stays: the gateway goes on relaying. Its progress is made
            # durable at least once a second; once it covers what the client got, the gateway dies.
            deadline = time.monotonic() + 5
            while not any(completion >= received for _, _, completion in open_rows(live)):
                assert time.monotonic() < deadline, "no durable progress of the stream"
                time.sleep(0.05)
            kill(live)
    finally:
        stop(live.process)  # type: ignore[arg-type]
    assert 10 <= received < 100

    again = start_gateway(home, catalog_for(fake_upstream.url))
    try:
        window = again.window(key, LLAMA)
        assert window["reserved"] == 0
        assert prompt_tokens(MESSAGES) + received <= window["used"] <= reserved
        ((request_id, total, outcome),) = history(again, name)
        assert request_id.startswith("chatcmpl-") and (total, outcome) == (window["used"], "recovered")
        assert open_rows(again) == []
    finally:
        stop(again.process)  # type: ignore[arg-type]
