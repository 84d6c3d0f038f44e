"""The catalog file format, its errors, and the IO Intelligence preset against the reference text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshgate.catalog.loader import CatalogError, load_catalog_file, parse_catalog
from meshgate.catalog.presets import io_intelligence_models, local_default_models
from meshgate.catalog.toml_out import catalog_toml

REFERENCE = Path(__file__).parent / "data" / "io-intelligence-quotas-2025.txt"  # a copy of shared/reference's table

EXAMPLE = """
[[models]]
id = "meta-llama/Llama-3.3-70B-Instruct"
kind = "chat"
context_length = 128000
daily_quota = { chat = 1000000, api = 500000 }
owned_by = "io-intelligence"
[[models.upstreams]]
url = "http://10.0.0.5:8000/v1"
model = "served-name"
api_key = "secret"
[[models.upstreams]]
url = "http://10.0.0.6:8000/v1/"
"""


def test_issue_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE)
    (spec,) = load_catalog_file(path)
    assert spec.id == "meta-llama/Llama-3.3-70B-Instruct" and spec.kind == "chat"
    assert spec.context_length == 128000 and spec.daily_quota == {"chat": 1000000, "api": 500000}
    assert spec.owned_by == "io-intelligence"
    first, second = spec.upstreams
    assert (first.url, first.model, first.api_key) == ("http://10.0.0.5:8000/v1", "served-name", "secret")
    assert (second.url, second.model, second.api_key) == ("http://10.0.0.6:8000/v1", spec.id, None)
    assert spec.offers("api") and not spec.offers("embeddings")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = []", "at least one"),
        ('[[models]]\nid = "a"\ncontext_length = 10\n', "upstreams"),
        ('[[models]]\nid = "a"\nkind = "audio"\ncontext_length = 10\n', "kind"),
        ('[[models]]\nid = "a"\ncontext_length = "big"\n', "context_length"),
        ('[[models]]\nid = "a"\ncontext_length = 10\ndaily_quota = { web = 5 }\n', "bucket"),
        ('[[models]]\nid = "a"\ncontext_length = 10\ndaily_quota = { api = -5 }\n', "api"),
        ('[[models]]\nid = "a"\ncontext_length = 10\nquota = 5\n', "unknown keys"),
        ('[[models]]\nid = "a"\ncontext_length = 10\n[[models.upstreams]]\nurl = "https://x/v1"\n', "http://"),
        ('[[models]]\nid = "a"\ncontext_length = 10\n[[models.upstreams]]\nurl = "http://x/v1"\n' * 2, "twice"),
    ],
)
def test_invalid_catalogs_say_why(text: str, message: str) -> None:
    import tomllib

    with pytest.raises(CatalogError, match=message):
        parse_catalog(tomllib.loads(text))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]\n")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog_file(bad)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog_file(tmp_path / "missing.toml")


def _reference_rows() -> dict[str, tuple[int | None, int | None, int | None, int]]:
    def tokens(cell: str) -> int | None:
        cell = cell.strip()
        return None if cell == "N/A" else int(re.sub(r"[^0-9]", "", cell))

    rows = {}
    for line in REFERENCE.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 5 and cells[4].endswith("tk"):  # a table row: the context length cell
            rows[cells[0]] = (tokens(cells[1]), tokens(cells[2]), tokens(cells[3]), tokens(cells[4]) or 0)
    return rows


def test_preset_matches_the_reference_table() -> None:
    reference = _reference_rows()
    assert len(reference) == 17
    presets = {spec.id: spec for spec in io_intelligence_models("http://127.0.0.1:9/v1")}
    assert set(presets) == set(reference)
    for model_id, (chat, api, embeddings, context) in reference.items():
        spec = presets[model_id]
        assert spec.context_length == context
        assert spec.daily_quota.get("chat") == chat
        assert spec.daily_quota.get("api") == api
        assert spec.daily_quota.get("embeddings") == embeddings
        assert spec.kind == ("embedding" if embeddings is not None else "chat")


def test_catalog_round_trips_through_toml() -> None:
    import tomllib

    for specs in (io_intelligence_models("http://127.0.0.1:8001/v1"), local_default_models()):
        again = parse_catalog(tomllib.loads(catalog_toml(specs)))
        strip = [(s.id, s.kind, s.context_length, s.daily_quota, s.upstreams, s.local) for s in specs]
        assert [(s.id, s.kind, s.context_length, s.daily_quota, s.upstreams, s.local) for s in again] == strip
