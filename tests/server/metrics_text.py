"""Reading `/metrics` text in tests: every sample by (name, labels)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str | bytes) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 where the label set has none (a counter never incremented)."""
    return metrics.get((name, frozenset(labels.items())), 0.0)
