"""Loading the model catalog from TOML (`meshgate serve --config FILE`)."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from meshgate.catalog.spec import BUCKETS, Bucket, Capabilities, LocalSpec, ModelSpec, UpstreamSpec

# What a chat model can do (docs: README "Features by engine"); booleans unless said otherwise.
CAPABILITY_KEYS = ("reasoning", "think_tags", "tools", "json", "logprobs", "vision", "image_tokens")


class CatalogError(ValueError):
    """The catalog file is not valid; the message says where and why."""


def load_catalog_file(path: str | Path) -> list[ModelSpec]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"catalog file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
    return parse_catalog(data, source=str(path))


def parse_catalog(data: dict[str, Any], source: str = "catalog") -> list[ModelSpec]:
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise CatalogError(f"{source}: expected at least one [[models]] table")
    specs = [_parse_model(entry, f"{source}: models[{i}]") for i, entry in enumerate(models)]
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise CatalogError(f"{source}: model id {spec.id!r} appears twice")
        seen.add(spec.id)
    return specs


def _parse_model(entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a table")
    known = {
        "id",
        "kind",
        "context_length",
        "daily_quota",
        "owned_by",
        "created",
        "upstreams",
        "local",
        "suffix",
        *CAPABILITY_KEYS,
    }
    unknown = set(entry) - known
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    model_id = _require(entry, "id", str, where)
    where = f"{where} ({model_id})"
    kind = entry.get("kind", "chat")
    if kind not in ("chat", "embedding"):
        raise CatalogError(f"{where}: kind must be 'chat' or 'embedding', got {kind!r}")
    context_length = _require(entry, "context_length", int, where)
    if context_length <= 0:
        raise CatalogError(f"{where}: context_length must be positive")
    quota = _parse_quota(entry.get("daily_quota", {}), where)
    upstreams = tuple(
        _parse_upstream(u, model_id, f"{where}: upstreams[{i}]") for i, u in enumerate(entry.get("upstreams", []))
    )
    local = _parse_local(entry["local"], where) if "local" in entry else None
    if not upstreams and local is None and "upstreams" not in entry:
        raise CatalogError(
            f"{where}: needs at least one [[models.upstreams]] or a [models.local] worker"
            " (or `upstreams = []`: served only by workers that register, `meshgate worker`)"
        )
    return ModelSpec(
        id=model_id,
        kind=kind,
        context_length=context_length,
        daily_quota=quota,
        owned_by=str(entry.get("owned_by", "meshgate")),
        created=int(entry.get("created", time.time())),
        upstreams=upstreams,
        local=local,
        capabilities=_parse_capabilities(entry, kind, local, where),
        suffix=_flag(entry, "suffix", where),
    )


def _flag(table: dict[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: {key!r} must be true or false")
    return value


def _parse_capabilities(entry: dict[str, Any], kind: str, local: LocalSpec | None, where: str) -> Capabilities:
    given = {key: entry[key] for key in CAPABILITY_KEYS if key in entry}
    if kind != "chat":
        if given:
            raise CatalogError(f"{where}: {', '.join(sorted(given))} apply to chat models only")
        return Capabilities(tools=False, json=False, logprobs=False)
    for key, value in given.items():
        if key == "reasoning":
            if not isinstance(value, bool) and value != "always":
                raise CatalogError(f'{where}: reasoning must be true, false or "always"')
        elif key == "image_tokens":
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CatalogError(f"{where}: image_tokens must be a positive whole number")
        elif not isinstance(value, bool):
            raise CatalogError(f"{where}: {key} must be true or false")
    if local is not None and local.engine == "llama.cpp" and given.get("vision"):
        # The local worker loads no multimodal projector (mmproj): images would be refused by the engine.
        raise CatalogError(f"{where}: the local llama.cpp worker takes no images (vision = false)")
    if given.get("think_tags") and not given.get("reasoning"):
        raise CatalogError(f'{where}: think_tags needs reasoning = true or "always"')
    return Capabilities(**given)


def _parse_quota(raw: Any, where: str) -> dict[Bucket, int]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: daily_quota must be a table like {{ api = 500000 }}")
    quota: dict[Bucket, int] = {}
    for bucket, tokens in raw.items():
        if bucket not in BUCKETS:
            raise CatalogError(f"{where}: unknown quota bucket {bucket!r} (use {', '.join(BUCKETS)})")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise CatalogError(f"{where}: daily_quota.{bucket} must be a whole number of tokens >= 0")
        quota[bucket] = tokens
    return quota


def _parse_upstream(raw: Any, model_id: str, where: str) -> UpstreamSpec:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a table")
    url = _require(raw, "url", str, where).rstrip("/")
    if not url.startswith("http://"):
        raise CatalogError(f"{where}: url must start with http:// (put TLS termination in front of the engine)")
    return UpstreamSpec(url=url, model=str(raw.get("model", model_id)), api_key=raw.get("api_key"))


def _parse_local(raw: Any, where: str) -> LocalSpec:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: local must be a table")
    engine = _require(raw, "engine", str, f"{where}: local")
    if engine not in ("llama.cpp", "sentence-transformers"):
        raise CatalogError(f"{where}: local.engine must be 'llama.cpp' or 'sentence-transformers'")
    known = {"engine", "path", "threads", "parallel", "default_system_prompt"}
    return LocalSpec(
        engine=engine,
        path=_require(raw, "path", str, f"{where}: local"),
        threads=raw.get("threads"),
        parallel=raw.get("parallel"),
        default_system_prompt=raw.get("default_system_prompt"),
        options={k: v for k, v in raw.items() if k not in known},
    )


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CatalogError(f"{where}: {key!r} is required and must be a {kind.__name__}")
    return value
