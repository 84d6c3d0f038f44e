"""Prometheus metrics (`GET /metrics`), with label sets bounded by the catalog.

Labels are the catalog's model ids, the quota buckets, the endpoints and status classes,
and small fixed sets of reasons: a model name a client sends never becomes a label (a
request that names no catalog model is counted under `model=""`), and nothing names an
account or a key. The children of every label set a request can touch are made once, at
start-up, per model and bucket (`RouteMetrics`), and they are plain numbers that only the event loop updates: a request costs one method call
and a few additions (prometheus_client's own children take a lock per update; measured ~10 µs
a request for the seven updates, against ~1 µs here). prometheus_client writes the text format
from them when `/metrics` is read.
"""

from __future__ import annotations

import hmac
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meshgate.catalog.spec import BUCKETS, ModelSpec

ENDPOINTS = ("chat/completions", "completions", "embeddings", "models", "usage", "other")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "disconnect")  # disconnect: the client left before its answer ended
UPSTREAM_ERRORS = ("connect", "timeout", "status", "invalid", "too_large", "no_replica", "stream")
QUOTA_LIMITS = ("account", "key_budget")
# Seconds: the gateway's own answers take milliseconds, an engine's up to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
NO_MODEL = ""

_ENDPOINT_OF = {b"/chat/completions": "chat/completions", b"/completions": "completions", b"/embeddings": "embeddings"}


def endpoint_of(upstream_path: bytes) -> str:
    return _ENDPOINT_OF.get(upstream_path, "other")


def status_class(status: int) -> str:
    return "2xx" if status < 300 else "4xx" if status < 500 else "5xx"


class Histogram:
    """Bucket counts of one label set. Updated by the event loop only, so plain ints suffice:
    prometheus_client's own children take a lock and a few checks per update (measured
    ~1.5 µs each; a request makes seven updates), these a bisect and two adds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: value <= bound
        self.total += value

    def add(self, counts: list[int], total: float) -> None:
        """Another process's counts of the same buckets (see `Metrics.snapshot`)."""
        if len(counts) == len(self.counts):
            self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
            self.total += total

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class RouteMetrics:
    """One (model, bucket)'s numbers, made at start-up for every label set a request can touch."""

    __slots__ = (
        "bucket",
        "completion_tokens",
        "in_flight",
        "latency",
        "model",
        "prompt_tokens",
        "quota_refusals",
        "requests",
        "ttft",
        "upstream_errors",
    )

    def __init__(self, model: str, bucket: str, endpoints: Iterable[str]) -> None:
        self.model, self.bucket = model, bucket
        endpoints = tuple(endpoints)
        self.requests = {(endpoint, status): 0 for endpoint in endpoints for status in STATUS_CLASSES}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency = {endpoint: Histogram(LATENCY_BUCKETS) for endpoint in endpoints}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.upstream_errors = dict.fromkeys(UPSTREAM_ERRORS, 0)
        self.quota_refusals = dict.fromkeys(QUOTA_LIMITS, 0)
        self.in_flight = 0

    def finish(
        self,
        endpoint: str,
        status: str,
        prompt: int,
        completion: int,
        seconds: float,
        ttft: float | None,
        upstream_error: str | None,
    ) -> None:
        """A served request, once, after its settlement."""
        self.in_flight -= 1
        key = (endpoint, status)
        if key in self.requests:
            self.requests[key] += 1
            self.latency[endpoint].observe(seconds)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if ttft is not None:
            self.ttft.observe(ttft)
        if upstream_error is not None:
            self.upstream_errors[upstream_error] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[endpoint, status, n] for (endpoint, status), n in self.requests.items() if n],
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency": {endpoint: [h.counts, h.total] for endpoint, h in self.latency.items()},
            "ttft": [self.ttft.counts, self.ttft.total],
            "upstream_errors": self.upstream_errors,
            "quota_refusals": self.quota_refusals,
            "in_flight": self.in_flight,
        }

    def add(self, numbers: dict[str, Any], *, gauges: bool) -> None:
        for endpoint, status, n in numbers.get("requests", ()):
            if (endpoint, status) in self.requests:
                self.requests[(endpoint, status)] += n
        self.prompt_tokens += numbers.get("prompt_tokens", 0)
        self.completion_tokens += numbers.get("completion_tokens", 0)
        for endpoint, (counts, total) in numbers.get("latency", {}).items():
            if endpoint in self.latency:
                self.latency[endpoint].add(counts, total)
        if "ttft" in numbers:
            self.ttft.add(*numbers["ttft"])
        _add_known(self.upstream_errors, numbers.get("upstream_errors", {}))
        _add_known(self.quota_refusals, numbers.get("quota_refusals", {}))
        if gauges:
            self.in_flight += numbers.get("in_flight", 0)


def _add_known(into: dict[str, int], numbers: dict[str, int]) -> None:
    for name, n in numbers.items():
        if name in into:
            into[name] += n


class _Collector:
    """Writes the numbers as metric families when /metrics is read (off the hot path)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        routes = list(self._metrics.routes())
        common = ["model", "bucket"]
        requests = CounterMetricFamily(
            "meshgate_requests",
            "Requests answered, by model, quota bucket, endpoint and status class.",
            labels=[*common, "endpoint", "status"],
        )
        for (endpoint, status), count in self._metrics.unrouted.items():
            requests.add_metric([NO_MODEL, "", endpoint, status], count)
        for route in routes:
            for (endpoint, status), count in route.requests.items():
                requests.add_metric([route.model, route.bucket, endpoint, status], count)
        yield requests
        prompt = CounterMetricFamily("meshgate_prompt_tokens", "Prompt tokens charged (tokens in).", labels=common)
        completion = CounterMetricFamily(
            "meshgate_completion_tokens", "Completion tokens charged (tokens out).", labels=common
        )
        in_flight = GaugeMetricFamily("meshgate_requests_in_flight", "Requests being served now.", labels=common)
        latency = HistogramMetricFamily(
            "meshgate_request_duration_seconds",
            "Time from a served request's arrival to its settlement.",
            labels=[*common, "endpoint"],
        )
        ttft = HistogramMetricFamily(
            "meshgate_time_to_first_token_seconds",
            "Streams: time from the request's arrival to the first generated text sent to the client.",
            labels=common,
        )
        errors = CounterMetricFamily(
            "meshgate_upstream_errors",
            "Engine failures: connect, timeout, status (an error answer), invalid, too_large, no_replica, "
            "stream (a stream that failed after it started).",
            labels=[*common, "kind"],
        )
        refusals = CounterMetricFamily(
            "meshgate_quota_refusals",
            "Requests refused with 429 insufficient_quota: by the account's daily quota or the key's budget.",
            labels=[*common, "limit"],
        )
        for route in routes:
            labels = [route.model, route.bucket]
            prompt.add_metric(labels, route.prompt_tokens)
            completion.add_metric(labels, route.completion_tokens)
            in_flight.add_metric(labels, route.in_flight)
            for endpoint, histogram in route.latency.items():
                latency.add_metric([*labels, endpoint], histogram.cumulative(), histogram.total)
            ttft.add_metric(labels, route.ttft.cumulative(), route.ttft.total)
            for kind, count in route.upstream_errors.items():
                errors.add_metric([*labels, kind], count)
            for limit, count in route.quota_refusals.items():
                refusals.add_metric([*labels, limit], count)
        yield from (prompt, completion, latency, ttft, errors, refusals, in_flight)


def _endpoints(spec: ModelSpec) -> tuple[str, ...]:
    return ("embeddings",) if spec.kind == "embedding" else ("chat/completions", "completions")


class Metrics:
    """All of a gateway's numbers; `route(model, bucket)` gives what a request updates."""

    def __init__(self, models: Iterable[ModelSpec], token: str | None = None) -> None:
        self.models = tuple(models)
        self._token = f"Bearer {token}".encode() if token else None
        self._routes: dict[tuple[str, str], RouteMetrics] = {}
        for spec in self.models:
            for bucket in BUCKETS:
                if spec.offers(bucket):
                    self._routes[(spec.id, bucket)] = RouteMetrics(spec.id, bucket, _endpoints(spec))
        # Requests refused before any model was known (authentication, validation, an unknown model).
        self.unrouted = {(endpoint, status): 0 for endpoint in ENDPOINTS for status in STATUS_CLASSES}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def routes(self) -> Iterable[RouteMetrics]:
        return self._routes.values()

    def route(self, model: str, bucket: str) -> RouteMetrics | None:
        """A catalog model's bucket (None for a model added after start-up: not counted)."""
        return self._routes.get((model, bucket))

    def refused(self, endpoint: str, status: int, quota: tuple[str, str, str] | None) -> None:
        """A request answered without serving: `quota` = (model, bucket, limit) for a 429 of the quota."""
        if quota is not None:
            route = self._routes.get((quota[0], quota[1]))
            if route is not None:
                route.quota_refusals[quota[2]] += 1
                key = (endpoint, "4xx")
                if key in route.requests:
                    route.requests[key] += 1
                    return
        self.unrouted[(endpoint, status_class(status))] += 1

    def authorized(self, authorization: bytes | None) -> bool:
        """Whether a scrape may read: always without MESHGATE_METRICS_TOKEN, else with `Bearer <token>`."""
        if self._token is None:
            return True
        return authorization is not None and hmac.compare_digest(authorization, self._token)

    def snapshot(self) -> dict[str, Any]:
        """Every number, as JSON-able data that `add` reads back (another process's /metrics sums them)."""
        return {
            "unrouted": [[endpoint, status, n] for (endpoint, status), n in self.unrouted.items() if n],
            "routes": [[r.model, r.bucket, r.snapshot()] for r in self._routes.values()],
        }

    def add(self, snapshot: dict[str, Any], *, gauges: bool = True) -> None:
        """Add another process's `snapshot` (gauges only if that process is alive); unknown labels are left out."""
        for endpoint, status, n in snapshot.get("unrouted", ()):
            if (endpoint, status) in self.unrouted:
                self.unrouted[(endpoint, status)] += n
        for model, bucket, numbers in snapshot.get("routes", ()):
            route = self._routes.get((model, bucket))
            if route is not None:
                route.add(numbers, gauges=gauges)

    def summed(self, others: Iterable[tuple[dict[str, Any], bool]]) -> Metrics:
        """These numbers plus `others`' (snapshot, its process alive) as new metrics; itself if there are none."""
        others = list(others)
        if not others:
            return self
        total = Metrics(self.models)
        total.add(self.snapshot())
        for snapshot, alive in others:
            total.add(snapshot, gauges=alive)
        return total

    def render(self) -> bytes:
        return generate_latest(self.registry)
