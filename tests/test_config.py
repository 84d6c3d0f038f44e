"""Settings from the environment."""

from __future__ import annotations

import pytest

from meshgate.config import load_settings


def test_extra_fields_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_EXTRA_FIELDS", " priority, vllm_xargs,,mock ")
    assert load_settings().extra_fields == frozenset({"priority", "vllm_xargs", "mock"})
    monkeypatch.delenv("MESHGATE_EXTRA_FIELDS")
    assert load_settings().extra_fields == frozenset()
