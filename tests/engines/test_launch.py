"""Launch helpers, builtin model resolution, GGUF metadata and the default-system-prompt template."""

from __future__ import annotations

import sys
from pathlib import Path

import jinja2
import pytest

from meshgate.catalog.spec import LocalSpec
from meshgate.engines.builtin import BuiltinModelMissing, minilm_folder, resolve_builtin, smollm2_gguf
from meshgate.engines.chat_template import with_default_system
from meshgate.engines.gguf import GGUFError, chat_template
from meshgate.engines.launch import engine_command, health_path


def test_builtins_resolve_to_shipped_files() -> None:
    assert resolve_builtin("builtin:smollm2") == str(smollm2_gguf())
    assert smollm2_gguf().suffix == ".gguf" and smollm2_gguf().stat().st_size > 50e6
    assert (minilm_folder() / "modules.json").is_file()
    assert resolve_builtin("/models/x.gguf") == "/models/x.gguf"
    with pytest.raises(BuiltinModelMissing, match="builtin:smollm2"):
        resolve_builtin("builtin:nope")


def test_llamacpp_command() -> None:
    spec = LocalSpec("llama.cpp", "builtin:smollm2", threads=2, parallel=4, default_system_prompt="Be brief.")
    argv = engine_command(spec, "smol", 4096, 9001)
    assert argv[:3] == [sys.executable, "-m", "meshgate.engines.llamacpp"]
    joined = " ".join(argv)
    assert f"--model {smollm2_gguf()}" in joined
    for part in ("--served-name smol", "--port 9001", "--ctx-size 4096", "--parallel 4", "--threads 2"):
        assert part in joined
    assert argv[argv.index("--default-system-prompt") + 1] == "Be brief."
    assert health_path("llama.cpp") == "/health"


def test_embeddings_command_with_options() -> None:
    spec = LocalSpec("sentence-transformers", "/data/my-model", options={"max_batch": 16})
    argv = engine_command(spec, "emb", 256, 9002)
    assert argv[2] == "meshgate.engines.embeddings"
    assert argv[argv.index("--model") + 1] == "/data/my-model"
    assert argv[argv.index("--max-batch") + 1] == "16"
    assert argv[argv.index("--max-seq-length") + 1] == "256"


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown local engine"):
        engine_command(LocalSpec("vllm", "/x"), "x", 1, 1)


def test_gguf_reader(tmp_path: Path) -> None:
    template = chat_template(smollm2_gguf())
    assert template is not None and "<|im_start|>" in template
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(GGUFError):
        chat_template(bad)


def render(template: str, messages: list[dict[str, str]]) -> str:
    return jinja2.Environment().from_string(template).render(messages=messages, add_generation_prompt=True)


def test_default_system_prompt_template() -> None:
    template = chat_template(smollm2_gguf())
    assert template is not None
    wrapped = with_default_system(template, 'Say "hi" \\ plainly.\nÜbrigens: kurz.')
    user = [{"role": "user", "content": "Hello"}]
    out = render(wrapped, user)
    assert out.startswith('<|im_start|>system\nSay "hi" \\ plainly.\nÜbrigens: kurz.<|im_end|>\n')
    assert "SmolLM" not in out  # the model's built-in default is replaced, not added
    own = [{"role": "system", "content": "Be a pirate."}, *user]
    assert render(wrapped, own) == render(template, own)
