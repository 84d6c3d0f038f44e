"""`/metrics` under `serve --processes N`: each process's numbers summed in any process's scrape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from meshgate.catalog.spec import ModelSpec
from meshgate.server.metrics import Metrics
from meshgate.server.metrics_share import DIR_ENV, INDEX_ENV, SharedMetrics
from tests.server.metrics_text import samples, value

MODEL = "m"


def spec() -> ModelSpec:
    return ModelSpec(id=MODEL, kind="chat", context_length=1000, daily_quota={"api": 100})


def serve_one(metrics: Metrics, prompt: int = 3, completion: int = 5, seconds: float = 0.2) -> None:
    route = metrics.route(MODEL, "api")
    assert route is not None
    route.in_flight += 1
    route.finish("chat/completions", "2xx", prompt, completion, seconds, 0.05, None)


REQUESTS = {"model": MODEL, "bucket": "api", "endpoint": "chat/completions", "status": "2xx"}


def test_a_snapshot_adds_back_to_the_same_samples() -> None:
    one = Metrics([spec()])
    for _ in range(3):
        serve_one(one)
    one.refused("chat/completions", 400, None)
    one.route(MODEL, "api").in_flight += 2  # type: ignore[union-attr]
    copy = Metrics([spec()])
    copy.add(one.snapshot())
    assert samples(copy.render()) == samples(one.render())
    without_gauges = Metrics([spec()])
    without_gauges.add(one.snapshot(), gauges=False)
    assert value(samples(without_gauges.render()), "meshgate_requests_in_flight", model=MODEL, bucket="api") == 0
    assert value(samples(without_gauges.render()), "meshgate_requests_total", **REQUESTS) == 3


def test_labels_a_process_does_not_know_are_left_out() -> None:
    snapshot = {"routes": [["other-model", "api", {"prompt_tokens": 9}]], "unrouted": [["nowhere", "2xx", 1]]}
    metrics = Metrics([spec()])
    metrics.add(snapshot)
    assert samples(metrics.render()) == samples(Metrics([spec()]).render())


def test_any_process_scrapes_the_sum_and_a_replacement_carries_on(tmp_path: Path) -> None:
    first, second = Metrics([spec()]), Metrics([spec()])
    a, b = SharedMetrics(first, tmp_path, 0), SharedMetrics(second, tmp_path, 1)
    for _ in range(2):
        serve_one(first, prompt=10)
    serve_one(second, prompt=1)
    a.write()
    b.write()
    for shared in (a, b):
        text = shared.render()
        assert value(samples(text), "meshgate_requests_total", **REQUESTS) == 3
        assert value(samples(text), "meshgate_prompt_tokens_total", model=MODEL, bucket="api") == 21
        assert (
            value(
                samples(text),
                "meshgate_request_duration_seconds_count",
                model=MODEL,
                bucket="api",
                endpoint="chat/completions",
            )
            == 3
        )
    # Process 0 dies and a new one takes its index: the dead one's counters carry on in the new one.
    replacement = SharedMetrics(Metrics([spec()]), tmp_path, 0)
    serve_one(replacement.metrics, prompt=100)
    text = replacement.render()
    assert value(samples(text), "meshgate_requests_total", **REQUESTS) == 4
    assert value(samples(text), "meshgate_prompt_tokens_total", model=MODEL, bucket="api") == 121
    replacement.write()
    assert value(samples(b.render()), "meshgate_prompt_tokens_total", model=MODEL, bucket="api") == 121


def test_in_flight_counts_only_processes_that_are_alive(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(dead.stdout)
    stuck = Metrics([spec()])
    stuck.route(MODEL, "api").in_flight = 7  # type: ignore[union-attr]
    serve_one(stuck)
    (tmp_path / "5.json").write_bytes(orjson.dumps({"pid": gone_pid, "numbers": stuck.snapshot()}))
    alive = SharedMetrics(Metrics([spec()]), tmp_path, 0)
    alive.metrics.route(MODEL, "api").in_flight = 1  # type: ignore[union-attr]
    text = alive.render()
    assert (
        value(samples(text), "meshgate_requests_in_flight", model=MODEL, bucket="api") == 1
    )  # the dead one's 7 are not
    assert value(samples(text), "meshgate_requests_total", **REQUESTS) == 1  # its counters are


def test_a_half_written_or_foreign_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_bytes(b'{"pid": 1, "numb')
    (tmp_path / "2.json").write_bytes(b"[1, 2]")
    shared = SharedMetrics(Metrics([spec()]), tmp_path, 0)
    serve_one(shared.metrics)
    assert value(samples(shared.render()), "meshgate_requests_total", **REQUESTS) == 1


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIR_ENV, raising=False)
    assert SharedMetrics.from_env(Metrics([spec()])) is None  # one process: nothing shared
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    monkeypatch.setenv(INDEX_ENV, "3")
    shared = SharedMetrics.from_env(Metrics([spec()]))
    assert shared is not None and shared.path == tmp_path / "3.json"
    shared.write()
    assert (tmp_path / "3.json").exists() and not list(tmp_path.glob("*.tmp"))
    assert os.stat(tmp_path / "3.json").st_size > 0
