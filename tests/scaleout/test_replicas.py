"""Two gateway replicas (separate processes) on one PostgreSQL + Redis: quotas exact across them.

Each test has its own schema and Redis key prefix (tests/conftest.py: shared_backend), so runs and
other tests on the same servers never see each other's state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import redis

from tests.conftest import TEST_REDIS_URL, FakeUpstream
from tests.scaleout.conftest import (
    LLAMA,
    TTL,
    Cluster,
    burst,
    chat,
    history_total,
    set_quota_everywhere,
    wait_for,
)
from tests.web.conftest import PASSWORD, csrf_of, http_sign_up, web_url


def test_300_concurrent_requests_over_two_replicas_never_exceed_one_small_quota(cluster: Cluster) -> None:
    quota = 2_000
    name, key = cluster.cli.new_account("split")
    set_quota_everywhere(cluster.replicas, name, key, quota)
    urls = [replica.base_url for replica in cluster.replicas]

    outcomes = asyncio.run(burst(urls, key, 300, chat(10)))

    answered = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    charged = sum(o.total_tokens for o in answered)
    assert charged <= quota
    assert answered and refused  # 300 x 15 tokens cannot all fit in 2,000
    assert {(o.status, o.code) for o in refused} == {(429, "insufficient_quota")}
    # Refusals come while others' reservations (the prompt's byte bound + max_tokens) are still held, so
    # some quota may remain unused at the end; but most of it is used, and none stays held (below).
    assert charged >= quota // 2
    for replica in cluster.replicas:  # every replica reports the same window: the sum the clients got
        wait_for(lambda r=replica: r.window(key, LLAMA)["used"] == charged, 10, "usage differs between replicas")
        window = replica.window(key, LLAMA)
        assert (window["reserved"], window["remaining"]) == (0, quota - charged)
    assert history_total(cluster.cli, name) == charged  # and the durable history agrees


def test_a_replica_killed_during_a_burst_leaves_the_other_serving_and_nothing_stuck(cluster: Cluster) -> None:
    victim, survivor = cluster.replicas
    quota = 100_000
    name, key = cluster.cli.new_account("killed")
    set_quota_everywhere(cluster.replicas, name, key, quota)
    streams: list[int] = []

    def stream_on_the_victim() -> None:
        body = {**chat(16, delay_ms=150), "stream": True}
        headers = {"Authorization": f"Bearer {key}"}
        try:
            with httpx.stream("POST", victim.base_url + "/chat/completions", json=body, headers=headers) as response:
                streams.append(response.status_code)
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass  # cut by the SIGKILL

    threads = [threading.Thread(target=stream_on_the_victim) for _ in range(20)]
    for thread in threads:
        thread.start()
    wait_for(lambda: survivor.window(key, LLAMA)["reserved"] > 0 and len(streams) >= 10, 30, "no stream started")
    during = threading.Thread(target=lambda: results.extend(asyncio.run(burst([survivor.base_url], key, 60, chat(5)))))
    results: list[object] = []
    during.start()
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    during.join(120)
    for thread in threads:
        thread.join(60)

    assert [o.status for o in results] == [200] * 60  # type: ignore[attr-defined]

    # After the reservation TTL the victim's holds are swept: what they had delivered is charged
    # ("recovered"), the rest released. The window is then exactly quota - settled usage.
    def settled() -> bool:
        window = survivor.window(key, LLAMA)
        return window["reserved"] == 0 and window["used"] == history_total(survivor, name)

    wait_for(settled, TTL * 10 + 20, "the killed replica's reservations did not expire into settled usage")
    window = survivor.window(key, LLAMA)
    assert window["remaining"] == quota - history_total(survivor, name)
    outcomes = {row[0] for row in survivor.query("SELECT DISTINCT outcome FROM usage_events")}
    assert "recovered" in outcomes  # the streams cut mid-way were charged what they had delivered


def test_redis_losing_everything_rebuilds_the_windows_from_the_history(cluster: Cluster) -> None:
    quota = 1_000
    name, key = cluster.cli.new_account("wiped")
    urls = [replica.base_url for replica in cluster.replicas]
    outcomes = asyncio.run(burst(urls, key, 60, chat(10)))  # 60 x 15 = 900 tokens, under the catalog's quota
    used = sum(o.total_tokens for o in outcomes)
    assert [o.status for o in outcomes] == [200] * 60 and used == 900
    set_quota_everywhere(cluster.replicas, name, key, quota)  # now near it

    client = redis.Redis.from_url(TEST_REDIS_URL)  # a restart without persistence, of this run's keys only
    keys = list(client.scan_iter(match=f"{cluster.backend['MESHGATE_REDIS_PREFIX']}*", count=1000))
    assert keys
    client.delete(*keys)
    client.close()

    for replica in cluster.replicas:  # near the quota still, on both
        wait_for(lambda r=replica: r.window(key, LLAMA)["used"] == used, 10, "the window was not rebuilt")
    again = asyncio.run(burst(urls, key, 20, chat(10)))
    charged = sum(o.total_tokens for o in again)
    assert used + charged <= quota and charged <= 100
    assert any(o.status == 429 and o.code == "insufficient_quota" for o in again)
    assert history_total(cluster.cli, name) == used + charged


def test_revocations_disabled_accounts_and_overrides_reach_both_replicas_within_5_s(
    fake_upstream: FakeUpstream, tmp_path: object
) -> None:
    from pathlib import Path

    from tests.conftest import stop
    from tests.scaleout.conftest import start_replicas

    # The default refresh period (1 s), not the tests' usual 0.2 s.
    made = start_replicas(Path(str(tmp_path)), fake_upstream, extra_env={"MESHGATE_AUTH_REFRESH_SECONDS": "1"})
    try:
        replicas = made.replicas
        name, key = made.cli.new_account("revoked")
        other, other_key = made.cli.new_account("disabled")

        def status(replica: object, secret: str) -> int:
            response = httpx.post(
                replica.base_url + "/chat/completions",  # type: ignore[attr-defined]
                json=chat(2),
                headers={"Authorization": f"Bearer {secret}"},
                timeout=30,
            )
            return response.status_code

        for replica in replicas:  # cached as valid on both first
            assert status(replica, key) == 200 and status(replica, other_key) == 200

        key_id = made.cli.cli("keys", "list", "--account", name).stdout.splitlines()[1].split("\t")[0]
        lags: dict[str, float] = {}

        def within_5_s(what: str, reached: object) -> None:
            """Once the CLI command has returned (committed), every replica shows it within 5 s."""
            started = time.monotonic()
            for replica in replicas:
                wait_for(lambda r=replica: reached(r), 5.0 - (time.monotonic() - started), f"{what}: later than 5 s")  # type: ignore[operator]
            lags[what] = time.monotonic() - started

        made.cli.cli("quota", "set", "--account", other, "--model", LLAMA, "--bucket", "api", "--tokens", "7")
        within_5_s("override", lambda r: r.window(other_key, LLAMA)["limit"] == 7)
        made.cli.cli("accounts", "disable", other)
        within_5_s("disabled account", lambda r: status(r, other_key) == 401)
        made.cli.cli("keys", "revoke", key_id)
        within_5_s("revoked key", lambda r: status(r, key) == 401)
        print(f"refresh lags (s): {lags}")
        made.cli.cli("accounts", "enable", other)
        for replica in replicas:
            wait_for(lambda r=replica: status(r, other_key) == 429, 10, "enable not picked up")  # 7 tokens: too few
    finally:
        for replica in made.replicas:
            if replica.process is not None:
                stop(replica.process)


def test_failed_log_ins_are_counted_across_replicas(cluster: Cluster) -> None:
    """Five wrong passwords spread over two replicas lock the account on both (MESHGATE_LOGIN_FAILURES_PER_ACCOUNT=5)."""
    email = f"limits-{os.urandom(3).hex()}@example.com"
    http_sign_up(cluster.replicas[0], email).close()
    clients = [httpx.Client(base_url=web_url(replica), timeout=30.0) for replica in cluster.replicas]
    try:

        def log_in(client: httpx.Client, password: str) -> int:
            token = csrf_of(client.get("/login").text)
            form = {"email": email, "password": password, "csrf_token": token}
            return client.post("/login", data=form).status_code

        statuses = [log_in(clients[i % 2], "wrong password") for i in range(5)]
        assert statuses == [401] * 5  # three on one replica, two on the other
        assert [log_in(client, PASSWORD) for client in clients] == [429, 429]  # even the right one, on both
    finally:
        for client in clients:
            client.close()
